"""A fenced transactional producer on the real broker. Kafka fences it when another
producer takes its transactional id, and also when the coordinator aborts a transaction
that outlived transaction.timeout.ms (a broker down that long: what `make chaos` met).
The worker replaces its producer once and reads its partitions back, losing nothing;
fenced again soon after, another process has its id, and it stops."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import Producer

from tests.conftest import itron_connection
from worker.config import Settings
from worker.errors import WorkerFenced
from worker.kafka import producer_config
from worker.runtime import Worker
from worker.testing import OutputReader, Publisher, eventually, itron_request


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
    async def test_replaced_once_with_nothing_lost_then_fenced_again_it_stops(
        self, settings: Settings, itron_sim: Any
    ) -> None:
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        first, second = [f"fence-a{i}" for i in range(4)], [f"fence-b{i}" for i in range(4)]
        try:
            async with OutputReader(settings) as reader:
                await eventually(lambda: worker.readiness()[0], timeout=60, what="worker ready")
                await publish(settings, first)
                await reader.wait_for(succeeded(first), timeout=60, what="the first requests done")

                await take_transactional_id(settings, worker.transactional_id)
                await publish(settings, second)  # its first transaction finds the producer fenced
                out = await reader.wait_for(
                    lambda o: run.done() or succeeded(second)(o), timeout=90, what="the requests after the fence done"
                )
                assert not run.done(), run.exception()
                assert replaced(worker) == 1
                for request_id in first + second:
                    sequences = [e["sequence"] for e in out.events(request_id)]
                    assert sequences == sorted(set(sequences)), (request_id, sequences)  # no event twice

                await take_transactional_id(settings, worker.transactional_id)
                await publish(settings, ["fence-c0"])
                await eventually(run.done, timeout=60, what="the worker to stop")
            assert isinstance(run.exception(), WorkerFenced), run.exception()
            assert replaced(worker) == 1
        finally:
            stop.set()
            await asyncio.wait([run], timeout=60)
