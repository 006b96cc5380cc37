"""Every transaction is fenced by the group generation: it carries input offsets even when
it writes no request's progress (a poll result, a retention tombstone), so a worker that
lost its partitions without knowing cannot overwrite the new owner's state."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka.aio import AIOProducer

from tests.conftest import itron_connection, running
from worker.codec import Codec
from worker.config import Settings
from worker.engine.model import JobState, Phase, Status
from worker.kafka import ensure_topics, producer_config
from worker.records import state_to_record
from worker.runtime import TransactionalProducer, Worker
from worker.runtime.clients import threaded_producer
from worker.testing import OutputReader, eventually


class RecordingProducer:
    """The worker's real producer; notes, per committed transaction, whether it sent offsets."""

    def __init__(self, real: TransactionalProducer) -> None:
        self.real = real
        self.records = 0
        self.offsets_sent = False
        self.committed: list[tuple[int, bool]] = []  # (records, offsets sent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def begin_transaction(self) -> None:
        self.records, self.offsets_sent = 0, False
        await self.real.begin_transaction()

    async def produce(self, topic: str, **kwargs: Any) -> Any:
        self.records += 1
        return await self.real.produce(topic, **kwargs)

    async def commit_transaction(self, timeout: float, offsets: Any = None, metadata: Any = None) -> None:
        self.offsets_sent = bool(offsets)
        await self.real.commit_transaction(timeout, offsets, metadata)
        self.committed.append((self.records, self.offsets_sent))


async def write_expired_job(settings: Settings, request_id: str) -> None:
    """A finished job whose retention ended long ago, as a previous owner left it."""
    day_ms = 86_400_000
    long_ago = int(time.time() * 1000) - 30 * day_ms
    state = JobState(
        request_id, "acme", "itron", "itron", "{}", long_ago, 0, 0, Phase.DONE, Status.FAILED, 2, long_ago, long_ago
    ).evolve(finished_at_ms=long_ago, next_action_at_ms=long_ago + day_ms)
    producer = AIOProducer(producer_config(settings))
    try:
        await producer.produce(
            settings.topics.jobs,
            key=request_id.encode(),
            value=Codec().encode("JobState", state_to_record(state)),
            partition=0,
        )
        await producer.flush()
    finally:
        await producer.close()


class TestFencing:
    async def test_a_transaction_without_new_input_still_carries_offsets(
        self, settings: Settings, itron_sim: Any
    ) -> None:
        await ensure_topics(settings)
        await write_expired_job(settings, "expired")
        made: list[RecordingProducer] = []

        def factory(config: dict[str, Any]) -> Any:
            made.append(RecordingProducer(threaded_producer(config)))
            return made[-1]

        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)}, producer_factory=factory)
        async with running(worker), OutputReader(settings) as reader:
            # No request was ever read: the only thing to write is the expired job's tombstone.
            await reader.wait_for(lambda o: "expired" in o.jobs and o.jobs["expired"] is None, what="tombstone")
            await eventually(lambda: made[0].committed, what="a committed transaction")
        assert made[0].committed and all(offsets for records, offsets in made[0].committed if records), made[
            0
        ].committed
