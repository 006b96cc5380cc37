"""Reading owned partitions' job states back (design state-store §3.8): each partition's
slice of export.jobs is folded into its on-disk store, from the store's own offset when
the store can be trusted (warm: usually a short tail) or from the start after wiping it
(cold), batch by batch, so a partition is never held in memory. What comes back to the
loop is the open jobs only; finished ones stay in the store. Open jobs that a takeover
would not change (polling, next poll well ahead) come back *parked*, undecoded: the loop
decodes each when it is first needed (``worker.runtime.job_table``)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import structlog
from confluent_kafka.admin import AdminClient

from worker import kafka as kafka_io
from worker.codec import Codec
from worker.config import Settings
from worker.errors import DecodeError
from worker.observability import Metrics
from worker.records import decode_state
from worker.runtime.job_table import OpenJobs
from worker.store import StoreSet
from worker.store.loader import Folded, StoreLoader
from worker.store.peek import OPEN_HEADER

log = structlog.get_logger("export_worker")

# Open jobs decoded per slice before the loop gets a turn (≈ 25 µs each).
DECODE_SLICE = 2_000
# A polling job is parked only if its next poll is at least this far ahead of the read:
# the loop installs it a moment later, and one already due there would skip the
# takeover's spreading of overdue polls.
PARK_AHEAD_MS = 5_000


class StoreReader:
    """The worker's ``StateReader``: ``await reader(numbers)`` restores those partitions
    into their stores and returns each one's open jobs."""

    def __init__(
        self, settings: Settings, codec: Codec, admin: AdminClient, stores: StoreSet, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._admin = admin
        self._stores = stores
        self._metrics = metrics

    async def __call__(self, numbers: list[int]) -> dict[int, OpenJobs]:
        topic = self._settings.topics.jobs
        began = time.monotonic()
        facts = await kafka_io.log_facts(self._admin, topic, numbers)
        facts_at = time.monotonic()
        loaders: dict[int, StoreLoader] = {}
        starts: dict[int, int] = {}
        modes: dict[int, str] = {}
        for number in numbers:
            opened = await asyncio.to_thread(self._stores.open, facts[number])
            loaders[number] = StoreLoader(opened.store, self._codec)
            # A trusted store has an offset (trust rule 4); a wiped one starts from the
            # log's start, as an absolute offset: a fresh consumer given the logical
            # OFFSET_BEGINNING looks it up only after a 500 ms timer.
            offset = opened.store.offset if opened.trust.warm else None
            starts[number] = facts[number].log_start if offset is None else offset
            modes[number] = "cold" if offset is None else "warm"
            self._metrics.store_opens.labels(opened.trust.wipe.value if opened.trust.wipe else "warm").inc()
        read = dict.fromkeys(numbers, 0)

        async def fold(chunk: kafka_io.Chunk) -> None:
            loader = loaders[chunk.partition]
            # Never move a store back (a partition's end can lag its store while a
            # dead owner's transaction is still open).
            at = max(chunk.next_offset, loader.store.offset or 0)
            folded = await self._load(
                functools.partial(loader.fold, chunk.latest, at, records=chunk.records, heads=chunk.heads)
            )
            read[chunk.partition] += folded.records

        opened_at = time.monotonic()
        for loader in loaders.values():  # a warm store's open jobs, before its tail
            await self._load(loader.load_open)
        started = time.monotonic()
        await kafka_io.restore(self._settings, topic, starts, fold, admin=self._admin, header=OPEN_HEADER)
        read_at = time.monotonic()
        for number in numbers:
            self._metrics.restored_records.labels(modes[number]).inc(read[number])
        # Two fsyncs each: off the loop, which is polling the partitions already running,
        # and side by side.
        await asyncio.gather(*(asyncio.to_thread(self._stores.checkpoint, number, complete=True) for number in numbers))
        checkpointed_at = time.monotonic()
        states = {number: await self._open_jobs(loaders[number]) for number in numbers}
        log.info(
            "partition stores restored",
            partitions=numbers,
            modes=modes,
            records=read,
            seconds=round(time.monotonic() - started, 3),
            # Before ``seconds``: the log's facts, opening the stores, a warm store's open jobs.
            facts_seconds=round(facts_at - began, 3),
            open_seconds=round(opened_at - facts_at, 3),
            load_seconds=round(started - opened_at, 3),
            read_seconds=round(read_at - started, 3),
            checkpoint_seconds=round(checkpointed_at - read_at, 3),
        )
        return states

    async def _load(self, load: Callable[..., Folded]) -> Folded:
        """Run one load or fold in a thread until every registry schema it meets is
        fetched (or known to be missing); unreadable states are logged and skipped."""
        given_up: set[bytes] = set()
        while True:
            folded = await asyncio.to_thread(load, unreadable=given_up)
            # Reported for every attempt: what one dropped from the store is not met again.
            for request_id, why in folded.unreadable.items():  # one bad state must not stop the others
                log.error("unreadable job state skipped", key=request_id, error=why)
            if folded.unknown_schema is None:
                return folded
            try:
                await self._codec.decode_async("JobState", folded.unknown_schema)  # fetches its schema
            except DecodeError:
                given_up.add(folded.unknown_schema)

    async def _open_jobs(self, loader: StoreLoader) -> OpenJobs:
        """The partition's open jobs: polling ones not due soon parked, the rest decoded."""
        park_after = time.time_ns() // 1_000_000 + PARK_AHEAD_MS
        parkable, others = await asyncio.to_thread(loader.split_open, park_after)
        jobs = OpenJobs([], parkable)
        for i, (request_id, value) in enumerate(others):
            try:
                jobs.states.append(await decode_state(self._codec, value))
            except DecodeError as exc:
                log.error("unreadable job state skipped", key=request_id, error=str(exc))
            if i % DECODE_SLICE == DECODE_SLICE - 1:
                await asyncio.sleep(0)  # let the loop turn for the partitions already running
        return jobs
