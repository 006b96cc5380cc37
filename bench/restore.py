"""Restore time: a fresh worker takes over partitions holding 100,000 job states; time
until it is polling them again, as states/s against a bare consumer reading the same
partitions to their end.

The bare consumer and a fresh worker (its own group and an empty state directory: a
cold takeover each time) take turns, ``ROUNDS`` times: each worker is compared with the
bare reads right before and after it, and the figures are the median round's."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer

from bench.common import (
    WORKDIR,
    StateRecord,
    alternate,
    bench_settings,
    itron_conn,
    median_round,
    metric,
    produce,
    scrape,
    simulator,
    start_worker,
    wait_ready,
)
from worker.codec import Codec
from worker.config import PolicyConfig, Settings
from worker.engine.model import JobState, Phase, Status
from worker.kafka import admin_client, ensure_topics, log_starts
from worker.records import state_to_record
from worker.store.peek import open_header

ROUNDS = 3  # odd: the median is one of the rounds
FIRST_DUE_MS = 300_000
POLICY = PolicyConfig(first_poll_s=30, poll_initial_s=30, poll_multiplier=1.0, poll_max_s=30)


@dataclass
class Round:
    ready_s: float  # process start -> /readyz (restored and polling scheduled)
    restore_s: float  # the worker's own restore metric (read + decode + install)
    bare_s: float  # a bare consumer reading the same partitions to their end (before and after, averaged)

    @property
    def ratio(self) -> float:
        """The worker's states/s against the bare consumer's."""
        return self.bare_s / self.restore_s


@dataclass
class Restore:
    states: int
    rounds: list[Round]
    bare_known_s: float  # the same, from offsets it looked up (no offset-query timer)

    @property
    def median(self) -> Round:
        """The round of the median ratio: the row's figures."""
        return median_round(self.rounds, lambda r: r.ratio)

    @property
    def states_per_s(self) -> float:
        return self.states / self.median.restore_s

    @property
    def bare_states_per_s(self) -> float:
        return self.states / self.median.bare_s

    @property
    def bare_known_states_per_s(self) -> float:
        return self.states / self.bare_known_s


JOB = '{"type":"ItronBatchRequest","filetype":"Csv","tokens":{"ServicePoint":"9000053409"},"is_ohs_request":false}'


def running_state(i: int, now: int, partitions: int) -> JobState:
    """Job ``i``: an Itron job polled every 30 s, its next poll spread over the 30 s from
    ``FIRST_DUE_MS`` on: after the last round's worker is gone, so no round's takeover
    meets jobs already due (they would be decoded and polled, not parked)."""
    rid = f"restore-{i:06d}"
    return JobState(
        request_id=rid, tenant="acme", connection="itron", vendor="itron", job_json=JOB,
        requested_at_ms=now, origin_partition=i % partitions, origin_offset=i,
        phase=Phase.ACTIVE, status=Status.RUNNING, sequence=4, created_at_ms=now, updated_at_ms=now,
        vendor_status="Running", vendor_job_id=f"{i:08d}-0000-4000-8000-000000000000",
        submit_attempt=1, next_action_at_ms=now + FIRST_DUE_MS + i % 30_000,
    )  # fmt: skip


async def write_states(
    settings: Settings, n: int, state_of: Callable[[int, int, int], JobState] = running_state
) -> None:
    """``n`` states on export.jobs as the worker writes them (with their open-peek
    header), job ``i`` on partition ``i % partitions``."""
    codec = Codec()
    now = int(time.time() * 1000)

    def records() -> Iterator[StateRecord]:
        for i in range(n):
            state = state_of(i, now, settings.topics.partitions)
            value = codec.encode("JobState", state_to_record(state))
            yield state.request_id.encode(), i % settings.topics.partitions, value, open_header(state)

    await asyncio.to_thread(produce, settings, records())


async def bare_read(settings: Settings, *, from_known_offsets: bool = False) -> float:
    """Seconds for a plain consumer to read every partition of export.jobs to its end,
    from OFFSET_BEGINNING. ``from_known_offsets``: from each partition's first offset,
    asked for first (and timed) as the worker does; a fresh consumer given the logical
    OFFSET_BEGINNING looks it up only after librdkafka's 500 ms offset-query timer."""
    started = time.monotonic()
    parts = list(range(settings.topics.partitions))
    starts = dict.fromkeys(parts, OFFSET_BEGINNING)
    if from_known_offsets:
        starts = await log_starts(admin_client(settings), settings.topics.jobs, parts)
    consumer = AIOConsumer(
        {**settings.librdkafka(), "group.id": "bare-restore", "enable.partition.eof": True,
         "fetch.wait.max.ms": 50, "isolation.level": "read_committed"},
        max_workers=2,
    )  # fmt: skip
    await consumer.assign([TopicPartition(settings.topics.jobs, p, starts[p]) for p in parts])
    pending = set(parts)
    latest: dict[bytes, bytes] = {}
    while pending:
        for msg in await consumer.consume(10_000, 0.05):
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            latest[msg.key()] = msg.value()
    await consumer.close()
    return time.monotonic() - started


async def restore_once(settings: Settings, n: int, sim_url: str, name: str) -> tuple[float, float]:
    """A fresh worker with an empty state directory takes over every partition:
    (seconds to /readyz, its restore metric)."""
    state_dir = WORKDIR / f"state-{name}"
    shutil.rmtree(state_dir, ignore_errors=True)
    own = settings.model_copy(update={"group_id": f"{settings.group_id}-{name}", "state_dir": state_dir.resolve()})
    worker = start_worker(own, {"itron": itron_conn(sim_url, POLICY)}, name)
    try:
        ready_s = await wait_ready(worker, timeout=300)
        assert worker.port is not None
        _, text = await scrape(worker.port)
        restore_s = metric(text, "export_worker_restore_seconds_sum")
        restored = metric(text, "export_worker_restored_jobs_total")
        assert restored == n, f"restored {restored} of {n}"
    finally:
        worker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    return ready_s, restore_s


async def measure(bootstrap: str, n: int = 100_000, rounds: int = ROUNDS) -> Restore:
    settings = bench_settings(bootstrap, "restore")
    await ensure_topics(settings, admin_client(settings))
    await write_states(settings, n)
    async with simulator("itron", stage_seconds=1e9, record=False) as sim_url:

        async def bare(_: int) -> float:
            return await bare_read(settings)

        async def worker(i: int) -> tuple[float, float]:
            return await restore_once(settings, n, sim_url, f"restore-{i}")

        workers = await alternate(rounds, bare, worker)
    bare_known_s = await bare_read(settings, from_known_offsets=True)
    measured = [Round(ready_s, restore_s, (before + after) / 2) for (ready_s, restore_s), before, after in workers]
    return Restore(n, measured, bare_known_s)


if __name__ == "__main__":
    import sys

    from bench.common import broker

    with broker() as bootstrap:
        r = asyncio.run(measure(bootstrap, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
    print(
        r,
        f"ratio {r.median.ratio:.2f} (rounds {[round(x.ratio, 2) for x in r.rounds]}),"
        f" worker {r.states_per_s:.0f} states/s, bare {r.bare_states_per_s:.0f} states/s,"
        f" bare from known offsets {r.bare_known_states_per_s:.0f} states/s",
    )
