"""Fleet budgets on the real broker: a connection's rate and concurrency are the fleet's,
and each worker's share follows the partitions of export.requests it owns, rebalance by
rebalance."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import itron_connection, make_settings, running
from worker.config import TopicSettings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.faults import FaultPlan
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal

RATE, CALLS = 40.0, 8


def budget(worker: Worker) -> tuple[float, int]:
    limiter = worker.dispatcher.lanes["itron"].limiter
    return limiter.rate_per_s, limiter.max_concurrency


def gauge(worker: Worker, name: str, scope: str) -> float | None:
    return worker.metrics.registry.get_sample_value(name, {"connection": "itron", "scope": scope})


class TestFleetShares:
    async def test_each_worker_takes_the_share_of_the_partitions_it_owns(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        topics = TopicSettings(partitions=4).prefixed(f"t{uuid.uuid4().hex[:10]}.")
        sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=3)
        await sim.start()
        conn = {"itron": itron_connection(sim.base_url, rate_per_s=RATE, max_concurrency=CALLS)}
        first = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "a"), connections=conn)
        second = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "b"), connections=conn)
        try:
            async with running(first):
                await eventually(lambda: len(first.partitions) == 4, timeout=30, what="the first worker owns all")
                assert budget(first) == (RATE, CALLS)
                async with running(second):

                    def split() -> bool:
                        return len(first.partitions) == len(second.partitions) == 2

                    await eventually(split, timeout=60, what="two partitions each")
                    await eventually(lambda: budget(first) == budget(second) == (RATE / 2, CALLS // 2), timeout=10)
                    assert gauge(second, "export_worker_budget_rate_per_s", "worker") == RATE / 2
                    assert gauge(second, "export_worker_budget_rate_per_s", "fleet") == RATE
                    assert gauge(second, "export_worker_budget_concurrency", "worker") == CALLS // 2
                # The second one left: its partitions, and its share, come back.
                await eventually(lambda: budget(first) == (RATE, CALLS), timeout=60, what="the whole budget back")
        finally:
            await sim.stop()


def blocks(worker: Worker, source: str) -> float:
    sample = worker.metrics.registry.get_sample_value(
        "export_worker_connection_blocks_total", {"connection": "itron", "source": source}
    )
    return sample or 0.0


class TestFleetBackoff:
    async def test_a_429_one_worker_gets_blocks_the_connection_on_every_worker(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        topics = TopicSettings(partitions=4).prefixed(f"t{uuid.uuid4().hex[:10]}.")
        sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), faults=FaultPlan(retry_after_s=4.0), seed=5)
        await sim.start()
        conn = {"itron": itron_connection(sim.base_url)}
        one = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "a"), connections=conn)
        two = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "b"), connections=conn)
        settings = make_settings(kafka_bootstrap, topics, tmp_path)
        ids = [f"fb-{i}" for i in range(8)]
        try:
            async with running(one), running(two), OutputReader(settings) as reader:
                await eventually(lambda: len(one.partitions) == len(two.partitions) == 2, timeout=60, what="split")
                sim.faults.plan.next_429 = 1  # the next API call, whoever makes it
                async with Publisher(settings) as pub:
                    for request_id in ids:
                        await pub.send(itron_request(request_id))
                    await pub.flush()
                await eventually(lambda: blocks(one, "local") + blocks(two, "local") == 1, timeout=30, what="a 429")
                hit, other = (one, two) if blocks(one, "local") else (two, one)
                # The other worker never got a 429 and is blocked all the same.
                await eventually(lambda: blocks(other, "fleet") >= 1, timeout=10, what="the fleet block")
                assert blocks(other, "local") == 0
                assert other.dispatcher.lanes["itron"].limiter.blocked_until > other.clock.monotonic()
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=60, what="all terminal")
            assert all(out.events(r)[-1]["status"] == "SUCCEEDED" for r in ids)
            assert hit is not other
        finally:
            await sim.stop()
