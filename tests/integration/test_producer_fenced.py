"""A fenced transactional producer on the real broker. The coordinator fences it when it
aborts a transaction that outlived transaction.timeout.ms (a broker that does not answer
for that long: what `make chaos` met after its broker restart): the worker replaces its
producer and reads its partitions back, losing nothing. Fenced by another producer taking
its transactional id, over a transaction shorter than that, it stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from confluent_kafka import IsolationLevel, Producer

from tests.conftest import itron_connection, make_settings
from worker.config import Settings, TopicSettings
from worker.errors import WorkerFenced
from worker.kafka import admin_client, list_offsets, producer_config
from worker.runtime import TransactionalProducer, Worker
from worker.runtime.clients import threaded_producer
from worker.testing import OutputReader, Publisher, eventually, itron_request

TRANSACTION_TIMEOUT_MS = 5000


class HeldCommit:
    """The worker's real producer. Once ``hold()`` is called, the next commit first
    waits, its records delivered, until the coordinator has aborted the transaction on
    its own (it outlived the timeout): as a commit whose broker stopped answering."""

    def __init__(self, real: TransactionalProducer, aborted_by_coordinator: Any) -> None:
        self.real = real
        self._aborted = aborted_by_coordinator
        self.held = False
        self.released = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def hold(self) -> None:
        self.held = True

    async def commit_transaction(self, timeout: float, offsets: Any = None, metadata: Any = None) -> None:
        if self.held and not self.released:
            self.released = True
            await self.real.flush(timeout)  # the transaction is open at the coordinator now
            await eventually(self._aborted, timeout=120, interval=0.2, what="the coordinator's abort")
        await self.real.commit_transaction(timeout, offsets, metadata)


async def take_transactional_id(settings: Settings, transactional_id: str) -> None:
    """Another producer with the worker's transactional id: its init fences the worker's."""
    other = Producer(producer_config(settings, transactional_id=transactional_id))
    try:
        await asyncio.to_thread(other.init_transactions, 30)
    finally:
        await asyncio.to_thread(other.close)  # nothing queued: returns at once


async def publish(settings: Settings, ids: list[str]) -> None:
    async with Publisher(settings) as pub:
        for request_id in ids:
            await pub.send(itron_request(request_id))
        await pub.flush()


def replaced(worker: Worker) -> float:
    return worker.metrics.registry.get_sample_value("export_worker_producers_replaced_total") or 0.0


def succeeded(ids: list[str]) -> Any:
    return lambda out: all(out.last_status().get(r) == "SUCCEEDED" for r in ids)


class TestFencedProducer:
    async def test_a_transaction_aborted_on_timeout_replaces_the_producer_and_loses_nothing(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path, itron_sim: Any
    ) -> None:
        settings = make_settings(kafka_bootstrap, topics, tmp_path, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
        admin = admin_client(settings)
        partitions = list(range(topics.partitions))

        async def no_open_transaction() -> bool:
            """Every export.status partition's last stable offset is its end."""
            stable = await list_offsets(admin, topics.status, partitions, IsolationLevel.READ_COMMITTED)
            ends = await list_offsets(admin, topics.status, partitions, IsolationLevel.READ_UNCOMMITTED)
            return stable == ends

        made: list[HeldCommit] = []

        def factory(config: dict[str, Any]) -> TransactionalProducer:
            made.append(HeldCommit(threaded_producer(config), no_open_transaction))
            return made[-1]

        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)}, producer_factory=factory)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        first, second = [f"fence-a{i}" for i in range(4)], [f"fence-b{i}" for i in range(4)]
        try:
            async with OutputReader(settings) as reader:
                await eventually(lambda: worker.readiness()[0], timeout=60, what="worker ready")
                await publish(settings, first)
                await reader.wait_for(succeeded(first), timeout=60, what="the first requests done")

                made[0].hold()
                await publish(settings, second)  # their first transaction outlives the timeout
                out = await reader.wait_for(
                    lambda o: run.done() or succeeded(second)(o), timeout=120, what="the requests after the fence"
                )
                assert not run.done(), run.exception()
                assert made[0].released and len(made) == 2 and replaced(worker) == 1
                for request_id in first + second:
                    events = out.events(request_id)
                    sequences = [e["sequence"] for e in events]
                    assert sequences == sorted(set(sequences)), (request_id, sequences)  # no event twice
                    assert events[0]["status"] == "ACCEPTED", events  # none lost with the aborted transaction
        finally:
            stop.set()
            await asyncio.wait([run], timeout=60)
        assert run.exception() is None

    async def test_fenced_by_another_producer_with_its_id_it_stops(self, settings: Settings, itron_sim: Any) -> None:
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        try:
            async with OutputReader(settings) as reader:
                await eventually(lambda: worker.readiness()[0], timeout=60, what="worker ready")
                await publish(settings, ["fence-c0"])
                await reader.wait_for(succeeded(["fence-c0"]), timeout=60, what="the first request done")
                await take_transactional_id(settings, worker.transactional_id)
                await publish(settings, ["fence-c1"])  # its transaction finds the producer fenced
                await eventually(run.done, timeout=60, what="the worker to stop")
            assert isinstance(run.exception(), WorkerFenced), run.exception()
            assert replaced(worker) == 0
        finally:
            stop.set()
            await asyncio.wait([run], timeout=60)
