"""The transaction writer's bookkeeping and outcomes, over a fake producer and consumer.
Real transactions (fencing by the broker, aborts, read_committed) are tested against
Apache Kafka in tests/integration/test_transaction_abort.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from tests.unit.runtime_fakes import FakeClock, FakeConsumer, FakeProducer, accepted, call_for, connection, metrics
from worker.codec import Codec
from worker.engine.model import CallKind, PollAnswered, Status
from worker.errors import ProducerStuck
from worker.runtime.mailbox import CallAnswered
from worker.runtime.outbox import Outbox, Outgoing
from worker.runtime.partitions import Partitions
from worker.runtime.transactions import CallTimeouts, Outcome, TransactionWriter, fenced
from worker.runtime.txn_producer import RETRY_PAUSE_S, retrying

NOW_MS = 1_700_000_000_000


class Rig:
    def __init__(self, owned: tuple[int, ...] = (0, 1)) -> None:
        self.outbox = Outbox(FakeClock().clock.monotonic)
        self.partitions = Partitions("requests")
        self.partitions.claim(set(owned))
        for number in owned:
            self.partitions[number].ready = True
        self.producer = FakeProducer()
        self.consumer = FakeConsumer()
        self.metrics = metrics()
        self.writer = TransactionWriter(
            outbox=self.outbox, partitions=self.partitions, codec=Codec(), jobs_topic="jobs", metrics=self.metrics
        )

    async def open(self) -> Rig:
        await self.writer.open(self.producer, self.consumer)
        return self

    def request_read(self, partition: int, offset: int, request_id: str) -> None:
        """What intake and the stepper leave after reading one request: a state, an event,
        the input offset, and a submit waiting for the commit."""
        state = accepted(request_id, NOW_MS, partition=partition, offset=offset)
        self.outbox.offsets_advanced()
        self.partitions[partition].next_offset = offset + 1
        self.outbox.put_state(partition, request_id, state)
        self.outbox.add([Outgoing(partition, "status", request_id.encode(), b"event", None)])
        self.outbox.hold(call_for(state, connection(), CallKind.SUBMIT, partition=partition))

    def counter(self, outcome: str) -> float:
        return self.metrics.transactions.labels(outcome)._value.get()  # type: ignore[no-any-return]


class TestCut:
    async def test_nothing_pending_cuts_no_batch(self) -> None:
        rig = await Rig().open()
        assert await rig.writer.cut() is None

    async def test_a_batch_carries_records_positions_and_the_group_metadata(self) -> None:
        rig = await Rig().open()
        rig.request_read(1, 41, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        assert [(o.topic, o.target_partition) for o in batch.outgoing] == [("status", None), ("jobs", 1)]
        assert [(tp.partition, tp.offset) for tp in batch.offsets] == [(1, 42)]
        assert batch.metadata == "metadata-1" and [c.request_id for c in batch.calls] == ["r1"]
        assert batch.incarnations == rig.partitions.incarnations()

    async def test_without_input_offsets_no_group_metadata_is_asked_for(self) -> None:
        rig = await Rig().open()
        rig.outbox.put_state(0, "r1", None)
        batch = await rig.writer.cut()
        assert batch is not None and batch.offsets == [] and batch.metadata is None
        assert rig.consumer.metadata_asked == 0


class TestOutcomes:
    async def test_a_committed_batch_lets_its_calls_start(self) -> None:
        rig = await Rig().open()
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.COMMITTED and [c.request_id for c in settled.start] == ["r1"]
        txn = rig.producer.current
        assert txn.committed and txn.offsets == [(0, 8)] and txn.metadata == "metadata-1"
        assert ("jobs", b"r1", 0) in txn.records  # the state goes to the request's own partition
        assert rig.counter("committed") == 1

    async def test_a_record_the_broker_refuses_is_never_committed_without_it(self) -> None:
        rig = await Rig().open()
        rig.producer.refuse = lambda topic: topic == "jobs"
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.RESYNC and settled.start == []
        assert [c.request_id for c in settled.give_up] == ["r1"]
        assert not rig.producer.current.committed and rig.producer.current.aborted

    async def test_a_fenced_producer_settles_the_batch_as_fenced(self) -> None:
        rig = await Rig().open()
        rig.producer.commit_error = KafkaException(KafkaError(KafkaError._FENCED, "fenced"))
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.FENCED and len(settled.give_up) == 1
        assert rig.counter("aborted") == 1

    def test_a_producer_that_says_fatal_at_produce_is_fenced(self) -> None:
        """produce() answers _FATAL (not flagged fatal) once the producer is fenced."""
        assert fenced(KafkaError(KafkaError._FATAL, "fenced earlier"))
        assert fenced(KafkaError(KafkaError._FENCED)) and not fenced(KafkaError(KafkaError._MSG_TIMED_OUT))

    async def test_a_rebalance_mid_batch_rewrites_only_what_is_still_owned(self) -> None:
        rig = await Rig().open()
        rig.request_read(0, 7, "kept")
        rig.request_read(1, 3, "moved")
        batch = await rig.writer.cut()
        assert batch is not None
        rig.producer.offsets_error = KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "generation"))
        error = await rig.writer.write(batch)
        rig.partitions.drop({1})  # revoked meanwhile
        settled = await rig.writer.settle(batch, error)
        assert settled.outcome is Outcome.COMMITTED
        assert [c.request_id for c in settled.start] == ["kept"]
        assert [c.request_id for c in settled.give_up] == ["moved"]
        first, second = rig.producer.transactions
        assert first.aborted and not first.committed
        assert second.committed and second.offsets == [(0, 8)] and second.metadata == "metadata-2"
        assert {key for _, key, _ in second.records} == {b"kept"}
        assert rig.counter("retried") == 1

    async def test_a_transactional_call_that_outlives_its_timeout_marks_the_producer_stuck(self) -> None:
        rig = await Rig().open()
        rig.writer.timeouts = CallTimeouts(commit_s=0.0, stuck_margin_s=0.05)
        rig.producer.hang_commit = True
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        with pytest.raises(ProducerStuck):
            await rig.writer.write(batch)
        assert rig.writer.stuck and not rig.writer.usable

    async def test_a_failed_transaction_that_cannot_be_aborted_stops_the_worker(self) -> None:
        """A commit that timed out for good leaves librdkafka's commit pending, and the
        abort is refused as conflicting with it: resyncing would fail the same way for
        ever, so the producer is declared unusable (the process is replaced)."""
        rig = await Rig().open()
        rig.producer.commit_error = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
        rig.producer.abort_error = KafkaException(KafkaError(KafkaError._CONFLICT, "commit_transaction in progress"))
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.FENCED and settled.error is not None
        assert "could not be aborted" in settled.error and [c.request_id for c in settled.give_up] == ["r1"]
        assert rig.writer.stuck and not rig.writer.usable

    async def test_an_abort_refused_as_fenced_leaves_the_producer_replaceable(self) -> None:
        """The coordinator aborted the transaction itself (it outlived its timeout during
        a broker outage) and fenced the producer: fenced, not stuck, its answers kept."""
        rig = await Rig().open()
        rig.producer.commit_error = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
        rig.producer.abort_error = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        rig.request_read(0, 7, "r1")
        answer = CallAnswered(0, rig.partitions[0].incarnation, "r0", PollAnswered("RUNNING", Status.RUNNING), None)
        rig.outbox.note_answer(answer)
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert (
            settled.outcome is Outcome.FENCED and settled.error is not None and "could not be aborted" in settled.error
        )
        assert settled.replay == [answer]
        assert not rig.writer.stuck and rig.writer.usable

    @pytest.mark.parametrize(
        "fault",
        [
            # librdkafka says the commit may be retried, and it failed all the same
            "commit_error",
            # failed before any record was reported: an abort sent then is refused for
            # good (librdkafka#4849), so the abort waits for the reports first
            "early_commit_error",
        ],
    )
    async def test_a_failed_transaction_that_aborts_is_resynced_and_the_producer_kept(self, fault: str) -> None:
        rig = await Rig().open()
        error = {
            "commit_error": KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True),
            "early_commit_error": KafkaError(KafkaError._FAIL, "injected failure", txn_requires_abort=True),
        }[fault]
        setattr(rig.producer, fault, KafkaException(error))
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        settled = await rig.writer.settle(batch, await rig.writer.write(batch))
        assert settled.outcome is Outcome.RESYNC and rig.producer.current.aborted
        assert rig.writer.usable

    async def test_a_background_batch_is_settled_when_finished(self) -> None:
        rig = await Rig().open()
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        rig.writer.start(batch)
        assert rig.writer.writing
        settled = await rig.writer.finish()
        assert settled is not None and settled.outcome is Outcome.COMMITTED
        assert not rig.writer.writing and await rig.writer.finish() is None

    async def test_a_background_batch_that_ends_wakes_whoever_waits_for_it(self) -> None:
        rig = await Rig().open()
        rig.request_read(0, 7, "r1")
        batch = await rig.writer.cut()
        assert batch is not None
        ended = asyncio.Event()
        rig.writer.start(batch, on_done=ended.set)
        await asyncio.wait_for(ended.wait(), 10)
        assert rig.writer.written


class TestRetrying:
    """The threaded producer's retry of a transactional call librdkafka says may be
    retried (``retrying``), on a fake clock."""

    def rig(self, failures: list[KafkaError]) -> tuple[list[float], list[float], Callable[[float], None]]:
        now = [0.0]
        timeouts: list[float] = []
        pauses: list[float] = []

        def call(timeout_s: float) -> None:
            timeouts.append(timeout_s)
            now[0] += 1.0  # each try takes a second
            if failures:
                raise KafkaException(failures.pop(0))

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            now[0] += seconds

        def run(deadline: float) -> None:
            retrying(call, deadline, clock=lambda: now[0], pause=pause)

        return timeouts, pauses, run

    def test_a_retriable_failure_is_tried_again_with_what_is_left_of_the_timeout(self) -> None:
        timed_out = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)
        timeouts, pauses, run = self.rig([timed_out, timed_out])
        run(10.0)
        assert timeouts == pytest.approx([10.0, 8.9, 7.8])
        assert pauses == [RETRY_PAUSE_S, RETRY_PAUSE_S]

    def test_a_failure_that_may_not_be_retried_is_raised_at_once(self) -> None:
        timeouts, _, run = self.rig([KafkaError(KafkaError._FENCED, "fenced"), KafkaError(KafkaError._TIMED_OUT)])
        with pytest.raises(KafkaException) as raised:
            run(10.0)
        assert raised.value.args[0].code() == KafkaError._FENCED and len(timeouts) == 1

    def test_retries_end_at_the_deadline(self) -> None:
        timed_out = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)
        timeouts, _, run = self.rig([timed_out] * 10)
        with pytest.raises(KafkaException):
            run(2.5)
        assert len(timeouts) == 3  # at 0, 1.1 and 2.2 s; the third ends past the deadline
