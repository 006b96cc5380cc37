"""Keeps the console's index up to date: reads export.jobs, export.status, export.files,
the dead-letter topic and the control topic from the beginning, then follows them.

Not a group member (it assigns every partition itself and commits nothing), so it never
takes a partition from a worker; ``read_committed``, so it shows only what the workers'
transactions committed. Every index call runs on one thread (``IndexThread``): SQLite
is synchronous and the pages must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition
from confluent_kafka.aio import AIOConsumer

from worker.codec import Codec
from worker.config import Settings
from worker.console.index import ConsoleIndex, JobRow, JobUpdate
from worker.errors import DecodeError
from worker.ops.dlq import letter_row
from worker.ops.errors import TopicMissing
from worker.ops.kafkaio import Cluster, client_config
from worker.records import decode_state
from worker.redaction import redact_text

log = structlog.get_logger("export_worker.console")

T = TypeVar("T")

# Records one consume call returns at most: the batch folded in one index transaction.
BATCH = 2_000
# How long to wait before looking again for a topic that does not exist yet.
TOPIC_RETRY_S = 2.0
# Pauses before reading again after a failure (doubling up to the maximum).
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0


class IndexThread:
    """The index, used from the event loop: every call runs on the same single thread."""

    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-index")
        self._index: ConsoleIndex = self._executor.submit(ConsoleIndex, path).result()

    async def call(self, fn: Callable[[ConsoleIndex], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._index)

    def close(self) -> None:
        self._executor.submit(self._index.close).result()
        self._executor.shutdown(wait=True)


@dataclass
class Progress:
    """How far the index has read: caught up once every partition reached its end once."""

    partitions: int = 0
    at_end: set[tuple[str, int]] = field(default_factory=set)
    records: int = 0
    undecodable: int = 0
    restarts: int = 0
    error: str | None = None  # why reading stopped last, until a batch is folded again
    missing_topics: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    caught_up_after_s: float | None = None

    @property
    def caught_up(self) -> bool:
        return self.partitions > 0 and len(self.at_end) >= self.partitions

    def as_json(self) -> dict[str, Any]:
        return {
            "caught_up": self.caught_up,
            "partitions_at_end": len(self.at_end),
            "partitions": self.partitions,
            "records": self.records,
            "undecodable": self.undecodable,
            "restarts": self.restarts,
            "error": self.error,
            "missing_topics": list(self.missing_topics),
            "caught_up_after_s": self.caught_up_after_s,
        }


@dataclass
class _Batch:
    jobs: dict[str, JobUpdate] = field(default_factory=dict)
    statuses: list[tuple[str, int, bytes]] = field(default_factory=list)
    files: list[tuple[str, str, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[int, int, str, dict[str, Any]]] = field(default_factory=list)
    control: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)


class IndexFollower:
    """Reads the five topics into the index until ``stop`` is set."""

    def __init__(self, settings: Settings, cluster: Cluster, codec: Codec, index: IndexThread) -> None:
        self.settings = settings
        self.cluster = cluster
        self.codec = codec
        self.index = index
        self.progress = Progress()
        self.caught_up = asyncio.Event()
        t = settings.topics
        self._kinds = {t.jobs: "jobs", t.status: "status", t.files: "files", t.dlq: "dlq", t.control: "control"}

    async def _assignment(self, stop: asyncio.Event) -> list[TopicPartition]:
        while True:
            assignment: list[TopicPartition] = []
            missing: list[str] = []
            for topic in self._kinds:
                try:
                    count = await self.cluster.partitions(topic)
                except TopicMissing:
                    missing.append(topic)
                    continue
                assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(count)]
            self.progress.missing_topics = missing
            if not missing:
                return assignment
            log.info("console waiting for topics", missing=missing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TOPIC_RETRY_S)
            if stop.is_set():
                return []

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the topics until ``stop``; after any failure (the broker gone, the
        registry down, the disk full) start again from the beginning after a pause:
        folding is idempotent, so nothing is lost or counted twice."""
        pause = RESTART_MIN_S
        while not stop.is_set():
            try:
                await self._follow(stop)
                return
            except Exception as exc:
                self.progress.restarts += 1
                self.progress.error = redact_text(f"{type(exc).__name__}: {str(exc)[:300]}")
                log.exception("console index stopped reading; starting again", pause_s=pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(RESTART_MAX_S, pause * 2)

    async def _follow(self, stop: asyncio.Event) -> None:
        assignment = await self._assignment(stop)
        if not assignment:
            return
        self.progress.partitions = len(assignment)
        consumer = AIOConsumer(
            {**client_config(self.settings), "group.id": f"{self.settings.group_id}.console",
             "enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
             "isolation.level": "read_committed", "fetch.wait.max.ms": 200},
            max_workers=1,
        )  # fmt: skip
        try:
            await consumer.assign(assignment)
            while not stop.is_set():
                batch = await consumer.consume(BATCH, 0.5)
                if batch:
                    await self._fold(batch)
                    self.progress.error = None
        finally:
            await consumer.close()

    async def _fold(self, messages: list[Message]) -> None:
        batch = _Batch()
        progress = self.progress
        for msg in messages:
            topic = msg.topic()
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    progress.at_end.add((topic, msg.partition()))
                else:
                    log.warning("console read error", topic=topic, error=error.str())
                continue
            progress.records += 1
            try:
                await self._add(batch, self._kinds.get(topic, ""), msg)
            except DecodeError:
                progress.undecodable += 1
        await self.index.call(
            lambda index: index.fold(
                batch.jobs.values(), batch.statuses, batch.files, batch.dead_letters, batch.control
            )
        )
        if progress.caught_up and not self.caught_up.is_set():
            progress.caught_up_after_s = round(time.monotonic() - progress.started_at, 2)
            log.info("console index caught up", records=progress.records, seconds=progress.caught_up_after_s)
            self.caught_up.set()

    async def _add(self, batch: _Batch, kind: str, msg: Message) -> None:
        key, value = msg.key(), msg.value()
        if kind == "control":
            batch.control.append((key, value))
            return
        if kind == "dlq":
            if value is None:
                return
            letter = await self.codec.decode_async("DeadLetter", value)
            position = f"{msg.partition()}:{msg.offset()}"
            row = letter_row(letter, position)
            batch.dead_letters.append((msg.partition(), msg.offset(), letter["reason_code"], row))
            return
        if key is None:
            return
        request_id = key.decode("utf-8", "replace")
        if kind == "jobs":
            if value is None:
                batch.jobs[request_id] = JobUpdate(request_id, None, None)
                return
            state = await decode_state(self.codec, value)
            row = JobRow(
                request_id, state.tenant, state.connection, state.vendor, state.status.value,
                state.phase.value, state.vendor_job_id, state.updated_at_ms, msg.partition(),
            )  # fmt: skip
            batch.jobs[request_id] = JobUpdate(request_id, row, value)
        elif kind == "status" and value is not None:
            event = await self.codec.decode_async("JobStatusChanged", value)
            batch.statuses.append((request_id, int(event["sequence"]), value))
        elif kind == "files" and value is not None:
            batch.files.append((request_id, f"{msg.partition()}:{msg.offset()}", value))
