"""``dlq list`` and ``dlq replay``: the dead-letter topic.

A DeadLetter carries the original record's topic, partition, offset, key, value and
headers. ``dlq replay`` writes key, value and headers back to the original topic and
partition (where the request's state lives, if it has one), once the operator fixed
the cause; the run itself is the shared replay machinery (ranges, checkpoint,
progress, Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from worker.codec import Codec, optional_epoch_ms
from worker.config import ConnectionConfig, Settings
from worker.errors import DecodeError
from worker.ops.checkpoint import Checkpoint
from worker.ops.errors import TopicMissing, UsageError
from worker.ops.kafkaio import Cluster, Span, connect, read_all
from worker.ops.partitioner import partition_for
from worker.ops.predict import Predictor
from worker.ops.replay import (
    Planned,
    Target,
    load_predictor,
    open_checkpoint,
    resolve_spans,
    run_range,
)
from worker.ops.run import Hooks, NoHooks, Outcome, OutcomeKind, RunReport
from worker.ops.timeparse import format_ms, parse_time
from worker.ops.wire import codec_for
from worker.redaction import redact_text

# Dead letters one replay may select by position (the console's checkboxes), and how far
# apart (offsets of one partition) they may be: the range between them is read.
MAX_SELECTED = 500
MAX_SELECTED_SPAN = 100_000


@dataclass(frozen=True, slots=True)
class DlqFilters:
    reasons: frozenset[str] | None = None
    since_ms: int | None = None

    @classmethod
    def parse(cls, reason: str | None, since: str | None, *, now_ms: int) -> DlqFilters:
        reasons = None
        if reason is not None:
            reasons = frozenset(r.strip() for r in reason.split(",") if r.strip())
            if not reasons:
                raise UsageError("--reason needs a reason code, e.g. unknown_connection")
        since_ms = None if since is None else parse_time(since, now_ms=now_ms, flag="--since")
        return cls(reasons, since_ms)

    def match(self, letter: dict[str, Any]) -> bool:
        return (self.reasons is None or letter["reason_code"] in self.reasons) and (
            self.since_ms is None or (optional_epoch_ms(letter.get("failed_at")) or 0) >= self.since_ms
        )


def _printable(key: bytes | None) -> str:
    if key is None:
        return ""
    text = key.decode("utf-8", "replace")
    return text if text.isprintable() else key.hex()


def letter_row(letter: dict[str, Any], position: str) -> dict[str, Any]:
    """One ``dlq list`` row (also its JSON form)."""
    return {
        "dlq_position": position,
        "reason_code": letter["reason_code"],
        "reason": redact_text(letter["reason"]),
        "failed_at": format_ms(optional_epoch_ms(letter.get("failed_at"))),
        "topic": letter["topic"],
        "partition": letter["partition"],
        "offset": letter["offset"],
        "request_id": letter.get("request_id"),
        "key": _printable(letter.get("key")),
        "worker": letter.get("worker", ""),
    }


@dataclass(frozen=True, slots=True)
class DlqListing:
    rows: list[dict[str, Any]]
    read: int
    undecodable: int


async def _dlq_spans(cluster: Cluster, topic: str, since: str | None, now_ms: int) -> list[Any]:
    return await resolve_spans(
        cluster, topic, from_time=since, from_offsets=(), to_time=None, to_offsets=(), now_ms=now_ms,
        require_start=False,
    )  # fmt: skip


async def list_dead_letters(
    settings: Settings, *, reason: str | None = None, since: str | None = None, hooks: Hooks | None = None
) -> DlqListing:
    """Dead letters, oldest first, optionally only some reason codes and since a time."""
    hooks = hooks or NoHooks()
    now_ms = int(time.time() * 1000)
    filters = DlqFilters.parse(reason, since, now_ms=now_ms)
    cluster = await connect(settings)
    topic = settings.topics.dlq
    spans = await _dlq_spans(cluster, topic, since, now_ms)
    codec = await codec_for(settings)
    hooks.phase(f"reading {topic}", sum(s.size for s in spans))
    try:
        messages = await read_all(settings, topic, spans, on_batch=hooks.advance)
    finally:
        hooks.done()
    rows, bad = [], 0
    for msg in messages:
        try:
            letter = await codec.decode_async("DeadLetter", msg.value())
        except DecodeError:
            bad += 1
            continue
        if filters.match(letter):
            rows.append(letter_row(letter, f"{msg.partition()}:{msg.offset()}"))
    rows.sort(key=lambda r: (r["failed_at"], r["dlq_position"]))
    return DlqListing(rows, len(messages), bad)


class DeadLetterPlanner:
    """Plans writing each dead letter's original record back where it came from."""

    def __init__(
        self,
        codec: Codec,
        cluster: Cluster,
        *,
        filters: DlqFilters,
        requests_topic: str,
        predictor: Predictor | None,
        positions: frozenset[tuple[int, int]] | None = None,
    ) -> None:
        self.codec = codec
        self.cluster = cluster
        self.filters = filters
        self.requests_topic = requests_topic
        self.predictor = predictor
        self.positions = positions  # only these dead letters (partition, offset)

    async def plan(self, msg: Message) -> Planned:
        if self.positions is not None and (msg.partition(), msg.offset()) not in self.positions:
            return Planned(matched=False)
        try:
            letter = await self.codec.decode_async("DeadLetter", msg.value())
        except DecodeError as exc:
            if self.filters.reasons is not None or self.filters.since_ms is not None:
                return Planned(matched=False)
            return Planned(True, None, Outcome(OutcomeKind.FAIL, f"not replayable: not a DeadLetter: {exc.message}"))
        if not self.filters.match(letter):
            return Planned(matched=False)
        topic, key, value = letter["topic"], letter.get("key"), letter.get("value")
        try:
            count = await self.cluster.partitions(topic)
        except TopicMissing as exc:
            return Planned(True, None, Outcome(OutcomeKind.FAIL, f"not replayable: {exc}", letter.get("request_id")))
        original = letter["partition"]
        partition = original if 0 <= original < count else partition_for(key or b"", count)
        headers = [(h["key"], h.get("value")) for h in letter.get("headers") or []]
        target = Target(topic, key, value, partition, headers or None)
        outcome = None
        if self.predictor is not None:
            outcome = await self._predict(topic, key, value, letter)
        return Planned(True, target, outcome)

    async def _predict(self, topic: str, key: bytes | None, value: bytes | None, letter: dict[str, Any]) -> Outcome:
        assert self.predictor is not None
        if topic != self.requests_topic:
            return Outcome(OutcomeKind.RESUBMIT, f"re-publish to {topic} (not the request topic: not checked)")
        predicted = await self.predictor.predict(key, value)
        was = letter["reason_code"]
        if predicted.kind is OutcomeKind.FAIL:
            text = predicted.text.removeprefix("would fail: ")
            if not text.startswith(f"{was}:"):
                text = f"{text} (was {was})"
            return Outcome(predicted.kind, f"still invalid: {text}", predicted.request_id)
        return Outcome(predicted.kind, f"accepted now (was {was}): {predicted.text}", predicted.request_id)


async def replay_dead_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    since: str | None = None,
    dry_run: bool = False,
    checkpoint: Path | None = None,
    connections: dict[str, ConnectionConfig] | None = None,
    hooks: Hooks | None = None,
    positions: Collection[tuple[int, int]] | None = None,
) -> RunReport:
    """``export-worker dlq replay``: write dead letters' original records back to their
    topic, or with ``dry_run`` say whether each would now be accepted. ``positions``:
    only these dead letters, as (partition, offset) in the dead-letter topic (at most
    ``MAX_SELECTED``; the console's selection)."""
    hooks = hooks or NoHooks()
    now_ms = int(time.time() * 1000)
    filters = DlqFilters.parse(reason, since, now_ms=now_ms)
    selected = None if positions is None else frozenset(positions)
    if selected is not None and not 0 < len(selected) <= MAX_SELECTED:
        raise UsageError(f"select between 1 and {MAX_SELECTED} dead letters")
    topic = settings.topics.dlq
    args = {"topic": topic, "reason": sorted(filters.reasons) if filters.reasons else None, "since": since}
    if selected is not None:
        args["positions"] = [f"{p}:{o}" for p, o in sorted(selected)]
    saved, _tag = await open_checkpoint(checkpoint, "dlq replay", args, tag=None)
    report = RunReport("dlq replay", topic, dry_run, checkpoint=checkpoint, resumed=saved is not None)
    if saved is not None and saved.complete:
        report.already_complete = True
        return report
    cluster = await connect(settings)
    if saved is not None:
        spans = saved.spans
    elif selected is not None:
        spans = await _selected_spans(cluster, topic, selected)
    else:
        spans = await _dlq_spans(cluster, topic, since, now_ms)
        if checkpoint is not None and not dry_run:
            saved = Checkpoint(checkpoint, "dlq replay", args, topic, spans)
            saved.save(now_ms)
    codec = await codec_for(settings)
    predictor = None
    if dry_run:
        predictor = await load_predictor(settings, cluster, codec, connections, hooks, now_ms)
        report.unchecked = connections is None
    planner = DeadLetterPlanner(
        codec, cluster, filters=filters, requests_topic=settings.topics.requests, predictor=predictor,
        positions=selected,
    )  # fmt: skip
    return await run_range(settings, report=report, spans=spans, planner=planner, checkpoint=saved, hooks=hooks)


async def _selected_spans(cluster: Cluster, topic: str, selected: frozenset[tuple[int, int]]) -> list[Span]:
    """One span per partition, from the first selected offset to past the last; a
    selected dead letter that is not in the topic (any more), or a selection spread
    over more than ``MAX_SELECTED_SPAN`` offsets of a partition, is a UsageError."""
    by_partition: dict[int, list[int]] = {}
    for partition, offset in selected:
        by_partition.setdefault(partition, []).append(offset)
    count = await cluster.partitions(topic)
    present = [p for p in by_partition if p < count]
    starts = await cluster.beginnings(topic, present)
    ends = await cluster.ends(topic, present)
    gone = sorted(
        (p, o) for p, offsets in by_partition.items() for o in offsets
        if p >= count or not starts[p] <= o < ends[p]
    )  # fmt: skip
    if gone:
        shown = ", ".join(f"{p}:{o}" for p, o in gone[:10])
        raise UsageError(f"not in {topic} (any more): {shown}{' ...' if len(gone) > 10 else ''}; list them again")
    spans = [Span(p, min(offsets), max(offsets) + 1) for p, offsets in sorted(by_partition.items())]
    wide = [s for s in spans if s.size > MAX_SELECTED_SPAN]
    if wide:
        raise UsageError(
            f"the selection spans {wide[0].size} offsets of partition {wide[0].partition}; replay dead letters at"
            f" most {MAX_SELECTED_SPAN} offsets apart at a time (or use --reason/--since)"
        )
    return spans
