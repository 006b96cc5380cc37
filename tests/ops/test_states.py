"""export.jobs has one reader: the operator commands read it with the same code as a
worker's restore, but to the end committed now, never waiting on an open transaction."""

from __future__ import annotations

import time
import uuid

from confluent_kafka.aio import AIOProducer

from worker.codec import Codec
from worker.config import Settings
from worker.engine.model import JobState, Phase, Status
from worker.kafka import Chunk, admin_client, ensure_topics, producer_config, restore
from worker.observability import Metrics
from worker.ops.kafkaio import connect
from worker.ops.states import load_states
from worker.records import state_to_record
from worker.runtime.state_reader import StoreReader
from worker.store import StoreMemory, StoreSet


def state_value(codec: Codec, request_id: str) -> bytes:
    state = JobState(request_id, "acme", "itron", "itron", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2)
    return codec.encode("JobState", state_to_record(state))


async def produce_committed(settings: Settings, records: list[tuple[bytes, bytes | None, int]]) -> None:
    producer = AIOProducer(producer_config(settings))
    try:
        for key, value, partition in records:
            await producer.produce(settings.topics.jobs, key=key, value=value, partition=partition)
        await producer.flush()
    finally:
        await producer.close()


class TestLoadStates:
    async def test_latest_values_win_tombstones_delete_and_unreadable_values_are_counted(
        self, settings: Settings
    ) -> None:
        """The same keep-the-last-value-per-key read a restore does, then one decode step."""
        await ensure_topics(settings)
        codec = Codec()
        await produce_committed(
            settings,
            [
                (b"kept", b"garbage first", 0),
                (b"kept", state_value(codec, "kept"), 0),
                (b"deleted", state_value(codec, "deleted"), 1),
                (b"deleted", None, 1),
                (b"broken", b"not avro", 2),
            ],
        )
        snapshot = await load_states(settings, await connect(settings), codec)
        assert sorted(snapshot.states) == ["kept"] and snapshot.undecodable == 1
        chunks: list[Chunk] = []

        async def keep(chunk: Chunk) -> None:
            chunks.append(chunk)

        ends = await restore(settings, settings.topics.jobs, dict.fromkeys([0, 1, 2], -2), keep)
        assert [k for c in chunks if c.partition == 1 for k, v in c.latest.items() if v is None] == [b"deleted"]
        assert {k for c in chunks for k in c.latest} == {b"kept", b"deleted", b"broken"}
        assert sum(c.records for c in chunks) == 5  # superseded values counted too
        assert ends == {0: 2, 1: 2, 2: 1} and all(c.next_offset <= ends[c.partition] for c in chunks)

    async def test_an_open_transaction_does_not_hold_the_read_back(self, settings: Settings) -> None:
        """A worker's restore waits for a previous owner's open transaction (up to the
        transaction timeout); ``jobs list`` reads what is committed now and returns."""
        await ensure_topics(settings)
        codec = Codec()
        await produce_committed(settings, [(b"committed", state_value(codec, "committed"), 0)])
        open_txn = AIOProducer(producer_config(settings, transactional_id=f"open-{uuid.uuid4().hex[:8]}"))
        await open_txn.init_transactions(30)
        await open_txn.begin_transaction()
        try:
            for partition in range(settings.topics.partitions):
                await open_txn.produce(
                    settings.topics.jobs, key=b"open", value=state_value(codec, "open"), partition=partition
                )
            await open_txn.flush()
            started = time.monotonic()
            snapshot = await load_states(settings, await connect(settings), codec)
            elapsed = time.monotonic() - started
            assert sorted(snapshot.states) == ["committed"]
            assert elapsed < settings.transaction_timeout_ms / 1000 / 2, elapsed
        finally:
            await open_txn.abort_transaction(30)
            await open_txn.close()


class TestWorkerRestoreReader:
    async def test_a_worker_restores_every_readable_state_and_skips_the_rest(self, settings: Settings) -> None:
        """The restore path decodes with the same code as the operator commands: one bad
        value is logged and skipped, it never stops a partition's restore."""
        await ensure_topics(settings)
        codec = Codec()
        await produce_committed(
            settings,
            [(b"a", state_value(codec, "a"), 0), (b"broken", b"not avro", 0), (b"b", state_value(codec, "b"), 1)],
        )
        stores = StoreSet(settings.state_dir, group_id=settings.group_id, writer="w", memory=StoreMemory())
        read = StoreReader(settings, codec, admin_client(settings), stores, Metrics())
        states = await read([0, 1, 2])
        stores.close_all()
        found = {n: [s.request_id for s in jobs.states] + sorted(jobs.parked) for n, jobs in states.items()}
        assert found == {0: ["a"], 1: ["b"], 2: []}
