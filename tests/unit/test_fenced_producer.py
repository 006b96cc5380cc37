"""What the worker does with a fenced transactional producer, over fake Kafka clients (the
real broker's fences, a coordinator's abort on timeout and another producer taking the id,
are tests/integration/test_producer_fenced.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.unit.runtime_fakes import FakeClock, FakeConsumer, FakeProducer, own_restored
from worker.config import TopicSettings
from worker.errors import WorkerFenced
from worker.runtime import Worker
from worker.runtime.job_table import OpenJobs
from worker.runtime.transactions import Outcome, Settled
from worker.runtime.worker import PRODUCER_FENCES_WINDOW_S

TIMEOUT_S = 15.0  # the transaction timeout of these settings


class Rig:
    """A Worker over a fake consumer and producers (never started: the test drives it),
    owning request partitions 0 and 1, restored."""

    def __init__(self, tmp_path: Path) -> None:
        self.time = FakeClock()
        self.consumer = FakeConsumer()
        self.made: list[FakeProducer] = []
        settings = make_settings("127.0.0.1:9", TopicSettings(), tmp_path, transaction_timeout_ms=int(TIMEOUT_S * 1000))
        self.worker = Worker(
            settings,
            connections={},
            clock=self.time.clock,
            read_states=self.read,
            log_starts=self.log_starts,
            producer_factory=self.factory,
        )
        self.partitions = own_restored(self.worker, self.consumer)

    def factory(self, config: dict[str, Any]) -> FakeProducer:
        self.made.append(FakeProducer())
        return self.made[-1]

    async def open(self) -> Rig:
        await self.worker.writer.open(self.factory({}), self.consumer)
        return self

    async def read(self, numbers: list[int]) -> dict[int, OpenJobs]:
        return {n: OpenJobs([]) for n in numbers}

    async def log_starts(self, numbers: list[int]) -> dict[int, int]:
        return dict.fromkeys(numbers, 0)

    async def fenced(self, open_s: float) -> None:
        await self.worker._settle(Settled(Outcome.FENCED, [], [], "fenced", open_s=open_s))

    def replaced(self) -> float:
        return self.worker.metrics.registry.get_sample_value("export_worker_producers_replaced_total") or 0.0


class TestFencedProducer:
    async def test_a_transaction_open_past_the_timeout_gets_a_new_producer_and_a_resync(self, tmp_path: Path) -> None:
        rig = await Rig(tmp_path).open()
        before = {n: rig.partitions[n].incarnation for n in (0, 1)}
        await rig.fenced(open_s=TIMEOUT_S + 1)
        assert len(rig.made) == 2 and rig.worker.writer.producer is rig.made[1] is rig.worker.producer
        assert rig.replaced() == 1
        # Read back from Kafka: claimed afresh, restoring.
        assert all(rig.partitions[n].incarnation != before[n] for n in (0, 1))
        assert sorted(rig.partitions.restoring()) == [0, 1]

    async def test_a_shorter_transaction_was_fenced_by_another_process_and_the_worker_stops(
        self, tmp_path: Path
    ) -> None:
        rig = await Rig(tmp_path).open()
        with pytest.raises(WorkerFenced):
            await rig.fenced(open_s=TIMEOUT_S - 1)
        assert len(rig.made) == 1 and rig.replaced() == 0

    async def test_fenced_again_within_the_window_it_stops(self, tmp_path: Path) -> None:
        rig = await Rig(tmp_path).open()
        await rig.fenced(open_s=TIMEOUT_S + 1)
        rig.worker._producer_replaced_at -= PRODUCER_FENCES_WINDOW_S - 1  # type: ignore[operator]
        with pytest.raises(WorkerFenced):
            await rig.fenced(open_s=TIMEOUT_S + 1)
        assert len(rig.made) == 2 and rig.replaced() == 1

    async def test_fenced_again_after_the_window_it_replaces_again(self, tmp_path: Path) -> None:
        rig = await Rig(tmp_path).open()
        await rig.fenced(open_s=TIMEOUT_S + 1)
        rig.worker._producer_replaced_at -= PRODUCER_FENCES_WINDOW_S + 1  # type: ignore[operator]
        await rig.fenced(open_s=TIMEOUT_S + 1)
        assert len(rig.made) == 3 and rig.replaced() == 2

    async def test_a_stop_decided_inside_a_rebalance_callback_is_raised_at_the_next_turn(self, tmp_path: Path) -> None:
        """The hand-over catches WorkerFenced (a callback must not raise): the turn after it
        raises it all the same, however idle the worker is."""
        rig = await Rig(tmp_path).open()
        with pytest.raises(WorkerFenced):
            await rig.fenced(open_s=0.1)
        with pytest.raises(WorkerFenced):
            await rig.worker._turn([])

    async def test_partitions_being_handed_over_are_not_read_back(self, tmp_path: Path) -> None:
        rig = await Rig(tmp_path).open()
        kept, handed_over = rig.partitions[0].incarnation, rig.partitions[1].incarnation
        rig.partitions.start_revoking({1})
        await rig.fenced(open_s=TIMEOUT_S + 1)
        assert rig.partitions[1].incarnation == handed_over and rig.partitions[1].revoking
        assert rig.partitions[0].incarnation != kept and rig.partitions.restoring() == [0]

    async def test_while_stopping_it_stops(self, tmp_path: Path) -> None:
        rig = await Rig(tmp_path).open()
        rig.worker._stopping = True
        with pytest.raises(WorkerFenced):
            await rig.fenced(open_s=TIMEOUT_S + 1)
        assert len(rig.made) == 1
