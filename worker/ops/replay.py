"""Replaying records: the machinery shared by ``replay`` and ``dlq replay``, and the
planner for ``replay`` of export.requests.

A run reads fixed offset ranges (resolved once, kept in the checkpoint), asks a
planner what to do with each record, and either predicts the worker's handling
(``--dry-run``) or re-publishes it. ``replay`` re-publishes a request marked as an
operator's replay of itself (``replay_of`` = its own request id), which is what lets
the worker re-announce a finished export's file for it and for no other duplicate;
``replay --force`` re-exports it under a derived id with ``replay_of`` = the original.

Progress is committed per batch: (1) every record of the batch is delivered (flush),
(2) the checkpoint records the batch's last offset per partition. A crash between the
two re-sends at most one batch on resume, and the worker treats a re-sent request as a
duplicate (no second vendor job). Ctrl-C (or a KeyboardInterrupt from a hook) runs the
same two steps for the records handled so far and re-raises, so the CLI exits 130
with the checkpoint saved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Message

from worker.codec import Codec
from worker.config import ConnectionConfig, Settings
from worker.errors import DecodeError
from worker.ops.checkpoint import Checkpoint
from worker.ops.errors import UsageError
from worker.ops.kafkaio import Cluster, RangeReader, Republisher, Span, connect
from worker.ops.partitioner import partition_for
from worker.ops.predict import Predictor
from worker.ops.run import Hooks, NoHooks, Outcome, OutcomeKind, RunReport, fail
from worker.ops.states import JobFilters, load_states
from worker.ops.timeparse import parse_position, parse_time
from worker.ops.wire import codec_for
from worker.vendor_registry import JOB_VENDORS

Headers = list[tuple[str, bytes | None]]
_TAG = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


# ---- planning one record ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A record to write."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    """A planner's decision on one source record."""

    matched: bool  # passes the filters; unmatched records are passed over silently
    target: Target | None = None  # None: the record cannot be replayed (``outcome`` says why)
    outcome: Outcome | None = None  # the prediction (dry run) or the reason it is not replayable


class Planner(Protocol):
    async def plan(self, msg: Message) -> Planned: ...


# ---- the run ----------------------------------------------------------------------------------


async def open_checkpoint(
    path: Path | None, command: str, args: dict[str, Any], *, tag: str | None
) -> tuple[Checkpoint | None, str | None]:
    """Load and check the checkpoint at ``path`` (None when there is none yet), and
    settle the tag: the one given, else the checkpoint's."""
    if path is None:
        return None, tag
    checkpoint = Checkpoint.load(path)
    if checkpoint is None:
        return None, tag
    checkpoint.check(command, args)
    if tag is not None and checkpoint.tag is not None and tag != checkpoint.tag:
        raise UsageError(
            f"--tag {tag} differs from the checkpoint's tag {checkpoint.tag}: a resumed --force run must derive "
            "the same request ids"
        )
    return checkpoint, tag or checkpoint.tag


async def run_range(
    settings: Settings,
    *,
    report: RunReport,
    spans: list[Span],
    planner: Planner,
    checkpoint: Checkpoint | None,
    hooks: Hooks,
) -> RunReport:
    """Read ``spans`` of ``report.topic``; plan, then predict or re-publish each record."""
    todo = checkpoint.remaining() if checkpoint is not None else spans
    report.total = sum(s.size for s in todo)
    publisher = None if report.dry_run else Republisher(settings)
    handled: dict[int, int] = {}
    sent = 0

    async def settle() -> None:
        """(1) deliver what was sent, (2) record it in the checkpoint."""
        nonlocal sent
        if publisher is not None:
            await publisher.flush()
        report.replayed += sent
        report.last.update(handled)
        if checkpoint is not None and not report.dry_run:
            checkpoint.done.update(handled)
            checkpoint.replayed += sent
            checkpoint.save(_now_ms())
        handled.clear()
        sent = 0

    hooks.phase(f"{'checking' if report.dry_run else 'replaying'} {report.topic}", report.total)
    try:
        async with RangeReader(settings, report.topic, todo) as reader:
            while not reader.exhausted:
                for msg in await reader.next_batch():
                    where_p, where_o = int(msg.partition() or 0), int(msg.offset() or 0)
                    where = f"{where_p}:{where_o}"
                    planned = await planner.plan(msg)
                    report.read += 1
                    if planned.matched:
                        report.matched += 1
                        if planned.outcome is not None and (report.dry_run or planned.target is None):
                            report.outcomes[planned.outcome.kind.value] += 1
                            report.predictions.append((where, planned.outcome))
                            hooks.outcome(where, planned.outcome)
                        if planned.target is None:
                            report.not_replayable += 1
                        elif publisher is not None:
                            t = planned.target
                            publisher.send(
                                t.topic, key=t.key, value=t.value, partition=t.partition, headers=t.headers, token=where
                            )
                            sent += 1
                    handled[where_p] = where_o
                    hooks.advance(1)
                if handled:
                    await settle()
        report.complete = True
        if checkpoint is not None and not report.dry_run:
            checkpoint.complete = True
            checkpoint.save(_now_ms())
    except (KeyboardInterrupt, asyncio.CancelledError):
        report.interrupted = True
        await settle()
        hooks.interrupted(report)
        raise
    finally:
        hooks.done()
    return report


def _now_ms() -> int:
    return int(time.time() * 1000)


async def resolve_spans(
    cluster: Cluster,
    topic: str,
    *,
    from_time: str | None,
    from_offsets: tuple[str, ...],
    to_time: str | None,
    to_offsets: tuple[str, ...],
    now_ms: int,
    require_start: bool,
) -> list[Span]:
    """Offset ranges for --from/--from-offset/--to/--to-offset; the end never passes
    the last stable offset now, so records written during the run are not read."""
    check_range(from_time, from_offsets, to_time, to_offsets, now_ms=now_ms, require_start=require_start)
    count = await cluster.partitions(topic)
    starts_at = _positions(from_offsets, "--from-offset", count, topic)
    ends_at = _positions(to_offsets, "--to-offset", count, topic)
    numbers = sorted(starts_at) if starts_at else list(range(count))
    begin = await cluster.beginnings(topic, numbers)
    end = await cluster.ends(topic, numbers)
    start = dict(begin)
    if from_time is not None:
        from_ms = parse_time(from_time, now_ms=now_ms, flag="--from")
        start = _at_or_end(await cluster.offsets_for_times(topic, numbers, from_ms), end)
    elif starts_at:
        start = {p: starts_at[p] for p in numbers}
    stop = dict(end)
    if to_time is not None:
        to_ms = parse_time(to_time, now_ms=now_ms, flag="--to")
        stop = _at_or_end(await cluster.offsets_for_times(topic, numbers, to_ms), end)
    for p, last in ends_at.items():
        if p in stop:
            stop[p] = min(stop[p], last + 1)  # --to-offset is inclusive
    return [Span(p, max(start[p], begin[p]), stop[p]) for p in numbers]


def check_range(
    from_time: str | None,
    from_offsets: tuple[str, ...],
    to_time: str | None,
    to_offsets: tuple[str, ...],
    *,
    now_ms: int,
    require_start: bool,
) -> None:
    """Refuse bad or conflicting range arguments before touching the cluster."""
    if from_time is not None and from_offsets:
        raise UsageError("give --from TIME or --from-offset P:O, not both")
    if to_time is not None and to_offsets:
        raise UsageError("give --to TIME or --to-offset P:O, not both")
    if require_start and from_time is None and not from_offsets:
        raise UsageError("say where to start: --from TIME (e.g. -24h) or --from-offset P:O (e.g. 0:1500)")
    start = None if from_time is None else parse_time(from_time, now_ms=now_ms, flag="--from")
    stop = None if to_time is None else parse_time(to_time, now_ms=now_ms, flag="--to")
    if start is not None and stop is not None and stop < start:
        raise UsageError(f"--to {to_time} is before --from {from_time}")
    for text in from_offsets:
        parse_position(text, flag="--from-offset")
    for text in to_offsets:
        parse_position(text, flag="--to-offset")


def _at_or_end(found: dict[int, int | None], end: dict[int, int]) -> dict[int, int]:
    """Offsets found by time, where "no record that late" means the partition's end."""
    out = {}
    for p, last in end.items():
        offset = found.get(p)
        out[p] = last if offset is None else min(offset, last)
    return out


def _positions(values: tuple[str, ...], flag: str, count: int, topic: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for text in values:
        partition, offset = parse_position(text, flag=flag)
        if partition >= count:
            raise UsageError(f"{flag} {text}: {topic} has partitions 0-{count - 1}")
        if partition in out:
            raise UsageError(f"{flag} names partition {partition} twice")
        out[partition] = offset
    return out


# ---- replay of export.requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """``export-worker replay`` arguments (TIME and P:O still as typed; parsed here)."""

    from_time: str | None = None
    from_offsets: tuple[str, ...] = ()
    to_time: str | None = None
    to_offsets: tuple[str, ...] = ()
    vendor: str | None = None
    tenant: str | None = None
    connection: str | None = None
    topic: str | None = None
    force: bool = False
    tag: str | None = None
    dry_run: bool = False
    checkpoint: Path | None = None
    connections: dict[str, ConnectionConfig] | None = None

    def identity(self, source: str) -> dict[str, Any]:
        """The arguments a checkpoint must match to be resumed."""
        return {
            "topic": source,
            "from": self.from_time,
            "from_offset": sorted(self.from_offsets) or None,
            "to": self.to_time,
            "to_offset": sorted(self.to_offsets) or None,
            "vendor": self.vendor,
            "tenant": self.tenant,
            "connection": self.connection,
            "force": self.force or None,
        }


def _headers(msg: Message) -> Headers | None:
    raw = msg.headers()
    if not raw:
        return None
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def derive_id(request_id: str, tag: str) -> str:
    """The request id a forced replay exports under."""
    return f"{request_id}~r{tag}"


def default_tag(now_ms: int) -> str:
    return dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y%m%d%H%M%S")


class RequestPlanner:
    """Plans the replay of ExportRequested records: filter, keep or derive the id, predict."""

    def __init__(
        self,
        codec: Codec,
        *,
        target_topic: str,
        target_partitions: int,
        same_partition: bool,
        filters: JobFilters,
        connections: dict[str, ConnectionConfig] | None,
        tag: str | None,
        predictor: Predictor | None,
    ) -> None:
        self.codec = codec
        self.target_topic = target_topic
        self.target_partitions = target_partitions
        self.same_partition = same_partition
        self.filters = filters
        self.connections = connections
        self.tag = tag
        self.predictor = predictor
        self.filtering = any(x is not None for x in (filters.vendors, filters.tenant, filters.connection))

    def _vendor(self, record: dict[str, Any]) -> str | None:
        job = record.get("job")
        short = job[0].rsplit(".", 1)[-1] if isinstance(job, tuple) else ""
        if short in JOB_VENDORS:
            return JOB_VENDORS[short]
        conn = (self.connections or {}).get(str(record.get("connection")))
        return conn.vendor if conn is not None else None

    def _match(self, record: dict[str, Any]) -> bool:
        f = self.filters
        return (
            (f.vendors is None or self._vendor(record) in f.vendors)
            and (f.tenant is None or record.get("tenant") == f.tenant)
            and (f.connection is None or record.get("connection") == f.connection)
        )

    async def plan(self, msg: Message) -> Planned:
        key, value = msg.key(), msg.value()
        try:
            record = await self.codec.decode_async("ExportRequested", value)
        except DecodeError as exc:
            if self.filtering:
                return Planned(matched=False)
            # It would only be dead-lettered again; `dlq replay` handles these after a fix.
            return Planned(True, None, fail(exc.reason_code, exc.message))
        if self.filtering and not self._match(record):
            return Planned(matched=False)
        headers = _headers(msg)
        request_id = str(record["request_id"])
        if self.tag is None:
            partition = msg.partition() if self.same_partition else partition_for(key or b"", self.target_partitions)
            # Marked as an operator's replay of this very request: the one kind of
            # duplicate for which the worker announces a finished export's file again.
            marked = self._encode({**record, "replay_of": request_id})
            target = Target(self.target_topic, key, marked, partition, headers)
        else:
            new_id = derive_id(request_id, self.tag)
            new_value = self._encode({**record, "request_id": new_id, "replay_of": request_id})
            new_key = new_id.encode()
            target = Target(
                self.target_topic, new_key, new_value, partition_for(new_key, self.target_partitions), headers
            )
        outcome = None
        if self.predictor is not None:
            outcome = await self.predictor.predict(target.key, target.value)
        return Planned(True, target, outcome)

    def _encode(self, record: dict[str, Any]) -> bytes:
        # A dry run only predicts from the bytes: single-object encoding, so it registers
        # no schema in a registry.
        topic = self.target_topic if self.predictor is None else None
        return self.codec.encode("ExportRequested", record, topic=topic)


async def load_predictor(
    settings: Settings,
    cluster: Cluster,
    codec: Codec,
    connections: dict[str, ConnectionConfig] | None,
    hooks: Hooks,
    now_ms: int,
) -> Predictor:
    """A predictor over the current export.jobs."""
    hooks.phase(f"reading {settings.topics.jobs}", None)
    snapshot = await load_states(settings, cluster, codec, on_batch=hooks.advance)
    hooks.done()
    return Predictor(
        codec,
        snapshot.states,
        connections=connections,
        max_bytes=settings.max_request_bytes,
        max_record_bytes=settings.max_record_bytes,
        now_ms=now_ms,
    )


async def replay_requests(settings: Settings, options: ReplayOptions, *, hooks: Hooks | None = None) -> RunReport:
    """``export-worker replay``: re-publish requests of a time or offset range to the
    request topic, as they were (the worker dedups them) or, with ``force``, under
    derived request ids; or with ``dry_run`` say what the worker would do with each."""
    hooks = hooks or NoHooks()
    t = settings.topics
    source = options.topic or t.requests
    if source == t.dlq:
        raise UsageError(f"{source} is the dead-letter topic: use `export-worker dlq replay`")
    if options.tag is not None and not options.force:
        raise UsageError("--tag names the derived request ids of --force; give --force too")
    if options.tag is not None and not _TAG.match(options.tag):
        raise UsageError(f"--tag {options.tag!r}: use 1-32 letters, digits, '.', '_' or '-'")
    filters = JobFilters.parse(vendor=options.vendor, tenant=options.tenant, connection=options.connection)
    now_ms = _now_ms()
    check_range(
        options.from_time, options.from_offsets, options.to_time, options.to_offsets, now_ms=now_ms, require_start=True
    )
    args = options.identity(source)
    checkpoint, tag = await open_checkpoint(options.checkpoint, "replay", args, tag=options.tag)
    report = RunReport("replay", source, options.dry_run, checkpoint=options.checkpoint)
    if options.force:
        tag = tag or default_tag(now_ms)
        report.tag = tag
    if checkpoint is not None:
        report.resumed = True
        if checkpoint.complete:
            report.already_complete = True
            return report
    cluster = await connect(settings)
    target_partitions = await cluster.partitions(t.requests)
    if checkpoint is not None:
        spans = checkpoint.spans
    else:
        spans = await resolve_spans(
            cluster,
            source,
            from_time=options.from_time,
            from_offsets=options.from_offsets,
            to_time=options.to_time,
            to_offsets=options.to_offsets,
            now_ms=now_ms,
            require_start=True,
        )
        if options.checkpoint is not None and not options.dry_run:
            checkpoint = Checkpoint(options.checkpoint, "replay", args, source, spans, tag=tag)
            checkpoint.save(now_ms)
    # A real run writes the requests back re-encoded (marked as replays): with a schema
    # registry, under the request topic's subject.
    codec = await codec_for(settings, writing=not options.dry_run)
    predictor = None
    if options.dry_run:
        predictor = await load_predictor(settings, cluster, codec, options.connections, hooks, now_ms)
        report.unchecked = options.connections is None
    planner = RequestPlanner(
        codec,
        target_topic=t.requests,
        target_partitions=target_partitions,
        # The worker keeps a request's state in the partition the request was read from:
        # a replay into that same partition meets the state and is deduplicated.
        same_partition=source == t.requests,
        filters=filters,
        connections=options.connections,
        tag=tag if options.force else None,
        predictor=predictor,
    )
    return await run_range(settings, report=report, spans=spans, planner=planner, checkpoint=checkpoint, hooks=hooks)


__all__ = [
    "Hooks",
    "NoHooks",
    "OutcomeKind",
    "Planned",
    "Planner",
    "ReplayOptions",
    "RunReport",
    "Target",
    "derive_id",
    "replay_requests",
    "resolve_spans",
    "run_range",
]
