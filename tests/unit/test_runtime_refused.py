"""A record the broker refuses affects only its own request: the transaction says which
records were refused, and after the resync that request is rejected at intake, or its
job failed with a state small enough to write."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError

from tests.conftest import itron_connection, make_settings
from tests.unit.runtime_fakes import Collaborators, FakeMessage, accepted, metrics
from tests.unit.test_runtime_transactions import Rig as WriterRig
from worker.codec import Codec
from worker.config import ConnectionConfig, TopicSettings
from worker.engine.model import Phase, Status, TimerFired
from worker.ingest import Ingest
from worker.runtime.intake import Intake
from worker.runtime.outbox import Outgoing
from worker.runtime.refused import refused_record
from worker.runtime.transactions import Outcome
from worker.testing import itron_request

CODEC = Codec()
TOPICS = TopicSettings()


def intake_for(rig: Collaborators, tmp_path: Path, connections: dict[str, ConnectionConfig]) -> Intake:
    """Intake over the rig's collaborators, reading a ready partition 0."""
    intake = Intake(
        make_settings("127.0.0.1:9", TOPICS, tmp_path),
        partitions=rig.partitions,
        stepper=rig.stepper,
        outbox=rig.outbox,
        codec=CODEC,
        clock=rig.time.clock,
        metrics=metrics(),
        worker_id="w",
        refused=rig.refused,
    )
    intake.open(Ingest(CODEC, connections, max_bytes=262_144))
    rig.partitions.claim({0})
    rig.partitions[0].ready = True
    return intake


class TestTheWriterSaysWhichRecordsWereRefused:
    async def test_records_the_broker_refuses_come_back_with_the_resync(self) -> None:
        rig = await WriterRig().open()
        rig.producer.refuse = lambda topic: topic == "jobs"
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.RESYNC
        assert [(o.topic, o.key) for o in settled.refused] == [("jobs", b"r1")]

    def test_only_errors_about_the_record_itself_count_as_refused(self) -> None:
        too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)  # the broker, not the record
        assert refused_record(too_large) and not refused_record(timed_out)
        assert refused_record(KafkaError(KafkaError.INVALID_RECORD))


class TestRefusedJobs:
    def test_an_open_job_whose_record_was_refused_fails_with_a_small_state(self) -> None:
        rig = Collaborators()
        refused = rig.refused
        part_number = next(iter(rig.partitions.claim({0})))
        part = rig.partitions[part_number]
        state = accepted("big", rig.time.now_ms()).evolve(job_json='{"x":"' + "a" * 50_000 + '"}')
        part.jobs["big"] = state
        refused.remember([Outgoing(0, "jobs", b"big", b"...", 0)], "dlq", "Broker: Message size too large")
        rig.stepper.apply(part, "big", TimerFired())
        job = part.jobs["big"]
        assert job.phase is Phase.DONE and job.status is Status.FAILED
        assert job.error is not None and job.error.code == "record_refused"
        assert job.job_json == "{}" and rig.outbox.states[(0, "big")] == job
        assert rig.outbox.calls == []  # no submit for a job that cannot be tracked
        rig.outbox.take(lambda number, state: b"", "jobs")
        rig.stepper.apply(part, "big", TimerFired())
        assert rig.outbox.states == {}  # dealt with once: the small state is not written again

    async def test_a_request_whose_first_record_was_refused_is_rejected_at_intake(self, tmp_path: Path) -> None:
        rig = Collaborators()
        refused = rig.refused
        intake = intake_for(rig, tmp_path, {"itron": itron_connection("http://127.0.0.1:9")})
        refused.remember([Outgoing(0, "jobs", b"r1", b"...", 0)], TOPICS.dlq, "Broker: Message size too large")
        value = CODEC.encode("ExportRequested", itron_request("r1"))
        await intake.take([FakeMessage(value, b"r1", offset_=4)])
        job = rig.partitions[0].jobs["r1"]
        assert job.status is Status.REJECTED and job.error is not None and job.error.code == "record_refused"
        assert [o.topic for o in rig.outbox.records] == [TOPICS.status, TOPICS.dlq]
        assert rig.partitions[0].next_offset == 5

    async def test_a_refused_dead_letter_is_written_again_without_the_bad_input(self, tmp_path: Path) -> None:
        rig = Collaborators()
        refused = rig.refused
        intake = intake_for(rig, tmp_path, {})
        refused.remember([Outgoing(0, TOPICS.dlq, b"k", b"...", None, origin_offset=9)], TOPICS.dlq, "too large")
        await intake.take([FakeMessage(b"garbage" * 1000, b"k", offset_=9, headers_=[("h", b"v")])])
        (letter,) = rig.outbox.records
        record = CODEC.decode("DeadLetter", letter.value)
        assert record["value"] is None and record["headers"] == [] and "refused by the broker" in record["reason"]
        assert rig.partitions[0].next_offset == 10
