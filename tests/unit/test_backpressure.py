"""Intake backpressure: the gate's hysteresis, and the worker pausing and resuming its
request partitions by the open jobs, over fake Kafka clients (the real broker's side,
fetching resumed from the right offset, is tests/integration/test_backpressure.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from pydantic import ValidationError
from structlog.testing import capture_logs

from tests.conftest import itron_connection, make_settings
from tests.unit.runtime_fakes import (
    FakeClock,
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    accepted,
    connection,
    own_restored,
)
from worker.codec import Codec
from worker.config import TopicSettings
from worker.engine.model import JobState, Phase
from worker.ingest import Ingest
from worker.observability import Metrics
from worker.runtime import Worker
from worker.runtime.backpressure import IntakeGate, low_water_mark
from worker.runtime.job_table import OpenJobs
from worker.testing import eventually, itron_request

TOPICS = TopicSettings()
CODEC = Codec()


def value(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


class TestGate:
    def test_it_closes_at_the_limit_and_reopens_only_at_the_low_water_mark(self) -> None:
        gate = IntakeGate(10, 7)
        assert [gate.decide(n) for n in (0, 9)] == [None, None]
        assert gate.decide(10) is True
        gate.closed = True
        # Between the marks nothing changes, in either direction: no flapping.
        assert [gate.decide(n) for n in (12, 10, 9, 8)] == [None] * 4
        assert gate.decide(7) is False
        gate.closed = False
        assert [gate.decide(n) for n in (8, 9)] == [None, None]
        assert gate.decide(11) is True  # a batch can overshoot the limit: still a close

    def test_a_closed_gate_holds_back_restored_partitions(self) -> None:
        gate = IntakeGate(10, 9)
        assert gate.may_resume()
        gate.closed = True
        assert not gate.may_resume()

    def test_zero_means_no_limit(self) -> None:
        metrics = Metrics()
        gate = IntakeGate(0, 0, metrics=metrics)
        assert gate.unlimited
        assert [gate.decide(n) for n in (0, 1, 10**9)] == [None] * 3
        assert gate.may_resume()
        assert value(metrics, "export_worker_open_jobs_limit") == 0

    @pytest.mark.parametrize(("max_open", "low_water"), [(-1, 0), (10, 10), (10, 11), (10, -1)])
    def test_marks_that_make_no_hysteresis_are_refused(self, max_open: int, low_water: int) -> None:
        with pytest.raises(ValueError):
            IntakeGate(max_open, low_water)

    def test_the_low_water_mark_is_the_fraction_of_the_limit_rounded_down(self) -> None:
        assert low_water_mark(100_000, 0.9) == 90_000
        assert low_water_mark(10, 0.9) == 9
        assert low_water_mark(100, 0.29) == 29  # 100 * 0.29 is 28.999999999999996
        assert low_water_mark(15, 0.5) == 7
        assert low_water_mark(0, 0.9) == 0


class TestSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        settings = make_settings("127.0.0.1:9", TOPICS, tmp_path)
        assert (settings.max_open_jobs, settings.intake_low_water) == (100_000, 0.9)
        gate = IntakeGate.from_settings(settings)
        assert (gate.max_open, gate.low_water) == (100_000, 90_000)

    def test_read_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from worker.config import Settings

        monkeypatch.setenv("EXPORT_WORKER_MAX_OPEN_JOBS", "500")
        monkeypatch.setenv("EXPORT_WORKER_INTAKE_LOW_WATER", "0.5")
        settings = Settings()
        assert (settings.max_open_jobs, settings.intake_low_water) == (500, 0.5)

    @pytest.mark.parametrize("max_open", [0, 10, 100_000])
    def test_a_usable_limit_is_accepted(self, tmp_path: Path, max_open: int) -> None:
        assert make_settings("127.0.0.1:9", TOPICS, tmp_path, max_open_jobs=max_open).max_open_jobs == max_open

    @pytest.mark.parametrize(
        ("field", "bad"),
        [
            ("max_open_jobs", 1),
            ("max_open_jobs", 9),
            ("max_open_jobs", -1),
            ("intake_low_water", 0.05),
            ("intake_low_water", 1.0),
            ("intake_low_water", float("nan")),
        ],
    )
    def test_out_of_range_values_are_refused_naming_the_field(self, tmp_path: Path, field: str, bad: Any) -> None:
        with pytest.raises(ValidationError, match=field):
            make_settings("127.0.0.1:9", TOPICS, tmp_path, **{field: bad})


class Rig:
    """A Worker over a fake consumer and producer (never started: the test drives its
    turns), owning request partitions 0 and 1, restored and read from."""

    def __init__(self, tmp_path: Path, *, max_open: int = 10, low_water: float = 0.5) -> None:
        self.time = FakeClock()
        self.consumer = FakeConsumer()
        self.stored: dict[int, list[JobState]] = {}
        settings = make_settings("127.0.0.1:9", TOPICS, tmp_path, max_open_jobs=max_open, intake_low_water=low_water)
        self.worker = Worker(
            settings, connections={}, clock=self.time.clock, read_states=self.read, log_starts=self.log_starts
        )
        self.partitions = own_restored(self.worker, self.consumer)

    async def read(self, numbers: list[int]) -> dict[int, OpenJobs]:
        return {n: OpenJobs(self.stored.get(n, [])) for n in numbers}

    async def log_starts(self, numbers: list[int]) -> dict[int, int]:
        return dict.fromkeys(numbers, 0)

    @property
    def metrics(self) -> Metrics:
        return self.worker.metrics

    def open_jobs(self, partition: int, count: int, prefix: str = "j") -> None:
        for i in range(count):
            request_id = f"{prefix}{partition}-{i}"
            self.partitions[partition].jobs[request_id] = accepted(request_id, self.time.now_ms(), partition=partition)

    def finish(self, partition: int, count: int) -> None:
        part = self.partitions[partition]
        open_ids = [rid for rid, state in part.jobs.items() if state.phase is not Phase.DONE][:count]
        for request_id in open_ids:
            part.jobs[request_id] = part.jobs[request_id].evolve(phase=Phase.DONE)

    async def turn(self, messages: list[Any] | None = None) -> None:
        await self.worker._turn(messages or [])

    async def assign(self, number: int) -> None:
        """A partition handed to this worker: paused, restored in the background, then
        installed by the turn that finds the restore done."""
        await self.worker._on_assign(self.consumer, [TopicPartition(TOPICS.requests, number)])
        await eventually(lambda: not self.worker.mailbox.empty(), timeout=5, what="restore read")
        await self.turn()
        assert self.partitions[number].ready


class TestWorker:
    async def test_intake_pauses_at_the_limit_and_resumes_at_the_low_water_mark(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, max_open=10, low_water=0.5)
        rig.open_jobs(0, 6)
        rig.open_jobs(1, 3)
        with capture_logs() as logs:
            await rig.turn()
            assert rig.consumer.paused == [] and not rig.worker.gate.closed  # 9 open: below the limit
            rig.open_jobs(1, 1, prefix="more")
            await rig.turn()
            assert rig.consumer.paused_now == {0, 1}
            assert value(rig.metrics, "export_worker_intake_paused") == 1
            assert value(rig.metrics, "export_worker_intake_pauses_total") == 1
            assert value(rig.metrics, "export_worker_open_jobs_limit") == 10
            rig.finish(0, 4)  # 6 open, above 5
            await rig.turn()
            assert rig.consumer.resumed == []
            rig.finish(1, 1)  # 5 open
            await rig.turn()
            assert rig.consumer.paused_now == set() and sorted(rig.consumer.resumed) == [0, 1]
            assert value(rig.metrics, "export_worker_intake_paused") == 0
            await rig.turn()
        gate_lines = [e for e in logs if e["event"].startswith("intake ")]
        assert gate_lines == [
            {
                "event": "intake paused",
                "log_level": "warning",
                "open_jobs": 10,
                "limit": 10,
                "resume_at": 5,
                "partitions": [0, 1],
            },
            {"event": "intake resumed", "log_level": "warning", "open_jobs": 5, "limit": 10, "partitions": [0, 1]},
        ]
        assert value(rig.metrics, "export_worker_intake_pauses_total") == 1  # one pause, however many turns

    async def test_only_ready_partitions_are_resumed(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.open_jobs(0, 10)
        await rig.turn()
        rig.worker.restorer.begin({2})  # a takeover under way: paused until restored
        rig.consumer.paused_now.add(2)
        rig.finish(0, 10)
        await rig.turn()  # reopens before the restore is installed
        assert 2 not in rig.consumer.resumed and 2 in rig.consumer.paused_now
        assert sorted(rig.consumer.resumed) == [0, 1]

    async def test_a_partition_installed_while_the_gate_is_closed_stays_paused(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.open_jobs(0, 10)
        await rig.turn()
        assert rig.worker.gate.closed
        await rig.assign(2)
        assert 2 in rig.consumer.paused_now and 2 not in rig.consumer.resumed
        rig.finish(0, 10)
        await rig.turn()
        assert rig.consumer.paused_now == set()  # reopening resumes it with the others
        assert sorted(rig.consumer.resumed) == [0, 1, 2]

    async def test_a_takeover_above_the_limit_keeps_intake_paused_until_its_jobs_drain(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.open_jobs(0, 5)
        now = rig.time.now_ms()
        rig.stored[2] = [accepted(f"taken-{i}", now, partition=2) for i in range(8)]
        await rig.assign(2)  # restored jobs cannot be refused: 13 open
        assert rig.partitions.open_jobs() == 13
        assert rig.consumer.paused_now == {0, 1, 2} and rig.worker.gate.closed
        rig.finish(2, 7)  # 6 open: above the low water mark of 5
        await rig.turn()
        assert rig.consumer.paused_now == {0, 1, 2}
        rig.finish(2, 1)
        await rig.turn()
        assert rig.consumer.paused_now == set()

    async def test_a_resync_while_the_gate_is_closed_leaves_the_partitions_paused(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        now = rig.time.now_ms()
        rig.stored[0] = [accepted(f"kept-{i}", now) for i in range(10)]
        rig.open_jobs(0, 10, prefix="kept-")
        await rig.turn()
        assert rig.worker.gate.closed
        rig.consumer.committed_offsets = {0: 3, 1: 0}
        await rig.worker._resync({0, 1})  # a failed transaction: read both back
        await eventually(lambda: not rig.worker.mailbox.empty(), timeout=5, what="restore read")
        await rig.turn()
        assert rig.partitions.restoring() == [] and rig.partitions.open_jobs() == 10
        assert rig.consumer.paused_now == {0, 1} and rig.consumer.resumed == []
        rig.finish(0, 10)
        await rig.turn()
        assert rig.consumer.paused_now == set()

    async def test_the_requests_of_the_batch_that_reaches_the_limit_are_all_taken(self, tmp_path: Path) -> None:
        """The overshoot is at most one consumed batch: the check runs after it."""
        rig = Rig(tmp_path)
        conn = connection()
        rig.worker.connections[conn.name] = conn
        rig.worker.dispatcher.open(rig.worker.connections)
        rig.worker.intake.open(Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:9")}, max_bytes=262_144))
        await rig.worker.writer.open(FakeProducer(), rig.consumer)
        rig.open_jobs(1, 8)
        batch = [
            FakeMessage(CODEC.encode("ExportRequested", itron_request(f"r{i}")), f"r{i}".encode(), offset_=i)
            for i in range(5)
        ]
        await rig.turn(batch)
        assert rig.partitions.open_jobs() == 13 and rig.partitions[0].next_offset == 5
        assert rig.consumer.paused_now == {0, 1}

    async def test_with_no_limit_intake_is_never_paused(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, max_open=0)
        rig.open_jobs(0, 5_000)
        await rig.turn()
        assert rig.consumer.paused == [] and not rig.worker.gate.closed
        assert value(rig.metrics, "export_worker_intake_paused") == 0
        assert value(rig.metrics, "export_worker_open_jobs_limit") == 0

    async def test_readiness_ignores_the_gate(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        rig.worker._started = rig.worker._joined = True
        rig.open_jobs(0, 10)
        await rig.turn()
        assert rig.worker.gate.closed
        assert rig.worker.readiness() == (True, "owns partitions [0, 1]")
