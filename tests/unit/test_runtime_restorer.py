"""Restore bookkeeping: incarnations, installing what was read, committed offsets and
resync, over a fake consumer and a chosen state reader (as quix-streams tests its
RecoveryManager). Reading export.jobs itself is tested against Apache Kafka."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException

from tests.unit.runtime_fakes import Collaborators, FakeConsumer, accepted, call_for, metrics
from worker.codec import Codec
from worker.engine.model import CallKind, JobState, Phase, Status, SubmitAnswered
from worker.kafka import BrokerUnavailable
from worker.records import state_to_record
from worker.runtime.job_table import OpenJobs, Parked
from worker.runtime.mailbox import CallAnswered, RestoreDone
from worker.runtime.partitions import REMEMBERED_REBUILDS
from worker.runtime.restorer import Carried, Restorer
from worker.testing import eventually


class Rig(Collaborators):
    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[int, list[JobState]] = {}
        self.parked: dict[int, dict[str, Parked]] = {}
        self.reads: list[list[int]] = []
        self.failures = 0  # reads to fail before one works
        self.consumer = FakeConsumer()
        self.log_starts_asked: list[list[int]] = []
        self.log_starts_raise: BrokerUnavailable | None = None
        self.restorer = Restorer(
            partitions=self.partitions,
            read_states=self.read,
            stepper=self.stepper,
            dispatcher=self.dispatcher,
            mailbox=self.mailbox,
            metrics=metrics(),
            log_starts=self.log_starts,
        )
        self.restorer.open(self.consumer)

    async def read(self, numbers: list[int]) -> dict[int, OpenJobs]:
        self.reads.append(numbers)
        if self.failures:
            self.failures -= 1
            raise OSError("broker went away")
        return {n: OpenJobs(self.stored.get(n, []), self.parked.get(n, {})) for n in numbers}

    async def log_starts(self, numbers: list[int]) -> dict[int, int]:
        """Where the consumer starts with nothing committed (its low watermarks)."""
        self.log_starts_asked.append(numbers)
        if self.log_starts_raise is not None:
            raise self.log_starts_raise
        return {n: self.consumer.low_watermarks.get(n, 0) for n in numbers}

    async def restored(self) -> RestoreDone:
        report = await asyncio.wait_for(self.mailbox.get(), 10)
        assert isinstance(report, RestoreDone)
        return report


class TestRestore:
    async def test_claimed_partitions_stay_not_ready_until_their_states_are_installed(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        rig.stored[0] = [accepted("open", now).evolve(phase=Phase.ACTIVE, vendor_job_id="j1", next_action_at_ms=now)]
        rig.consumer.committed_offsets = {0: 42}
        rig.restorer.begin({0, 1})
        assert rig.partitions.restoring() == [0, 1]
        done = await rig.restored()
        assert done.committed == {0: 42, 1: 0} and sorted(done.incarnations) == [0, 1]
        await rig.restorer.install(done)
        assert rig.partitions.restoring() == []
        # Nothing committed for partition 1: it stands where the consumer starts.
        assert rig.partitions[0].next_offset == 42 and rig.partitions[1].next_offset == 0
        assert set(rig.partitions[0].jobs) == {"open"}
        assert rig.dispatcher.next_due_ms() is not None  # its next poll is scheduled
        assert sorted(rig.consumer.resumed) == [0, 1]

    async def test_a_parked_job_is_scheduled_at_once_and_decoded_when_first_needed(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        polling = accepted("p", now).evolve(phase=Phase.ACTIVE, vendor_job_id="j1", next_action_at_ms=now + 60_000)
        value = Codec().encode("JobState", state_to_record(polling))
        rig.parked[0] = {"p": (value, polling.next_action_at_ms, polling.vendor, polling.status.value)}
        rig.restorer.begin({0})
        await rig.restorer.install(await rig.restored())
        jobs = rig.partitions[0].jobs
        assert (jobs.parked, jobs.open_count, rig.partitions.open_jobs()) == (1, 1, 1)
        assert rig.partitions.open_job_counts() == {(polling.vendor, polling.status.value): 1}
        assert rig.dispatcher.next_due_ms() == polling.next_action_at_ms
        assert jobs.get("p") == polling and jobs.parked == 0  # decoded on first look, as stored

    async def test_a_parked_job_that_fell_due_before_the_install_is_decoded_and_spread(self) -> None:
        """Parked on the reader's margin, due by the time the loop installs it: it takes
        the restore step like any overdue job (its poll spread), not its stale due time."""
        rig = Rig()
        now = rig.time.now_ms()
        overdue = accepted("late", now).evolve(phase=Phase.ACTIVE, vendor_job_id="j", next_action_at_ms=now - 1_000)
        value = Codec().encode("JobState", state_to_record(overdue))
        rig.parked[0] = {"late": (value, overdue.next_action_at_ms, overdue.vendor, overdue.status.value)}
        rig.restorer.begin({0})
        await rig.restorer.install(await rig.restored())
        jobs = rig.partitions[0].jobs
        assert jobs.parked == 0 and jobs.open_count == 1
        resumed = jobs["late"]
        assert resumed.next_action_at_ms >= now and rig.dispatcher.next_due_ms() == resumed.next_action_at_ms

    async def test_a_restore_for_an_incarnation_that_is_gone_is_not_installed(self) -> None:
        rig = Rig()
        rig.stored[0] = [accepted("stale", rig.time.now_ms())]
        rig.restorer.begin({0})
        done = await rig.restored()
        rig.partitions.claim({0})  # rebuilt meanwhile (a resync)
        await rig.restorer.install(done)
        assert rig.partitions[0].jobs == {} and not rig.partitions[0].ready
        assert rig.consumer.resumed == []

    async def test_a_failed_read_is_tried_again_until_it_works(self) -> None:
        rig = Rig()
        rig.failures = 1
        rig.restorer.begin({0})
        done = await rig.restored()
        assert rig.reads == [[0], [0]] and done.incarnations == {0: rig.partitions[0].incarnation}

    async def test_a_failing_restore_stops_once_its_partitions_moved_on(self) -> None:
        rig = Rig()
        rig.failures = 1_000
        rig.restorer.begin({0})
        await eventually(lambda: rig.reads, timeout=5, what="first read")
        rig.partitions.drop({0})
        await eventually(lambda: not rig.restorer.busy, timeout=10, what="restore given up")
        assert rig.mailbox.empty()


class TestCommittedOffsets:
    async def test_no_restore_starts_or_retries_once_shutdown_cancelled_the_restorer(self) -> None:
        """An assignment arriving while the consumer closes must not leave a restore
        retrying against the closed consumer: the process would never exit."""
        rig = Rig()
        rig.failures = 10**6  # every read fails, as against a closed consumer
        rig.restorer.begin({0})
        await eventually(lambda: len(rig.reads) >= 1, what="the first restore attempt")
        rig.restorer.cancel()  # Worker._shutdown, before it closes the consumer
        rig.restorer.begin({1})  # an assignment delivered during consumer.close()
        await eventually(lambda: not rig.restorer.busy, timeout=5, what="no restore left running")

    async def test_at_a_takeover_an_unanswered_lookup_resumes_without_offsets(self) -> None:
        rig = Rig()
        rig.consumer.committed_raises = KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
        assert await rig.restorer.committed_best_effort([0, 1]) == {}

    async def test_at_a_takeover_a_partition_with_nothing_committed_stands_at_its_low_watermark(self) -> None:
        """So that every transaction can carry input offsets (fencing), even before the
        first request of a partition is read; a lookup that failed is left out."""
        rig = Rig()
        rig.consumer.committed_offsets = {0: 5}
        rig.consumer.low_watermarks = {1: 300}
        rig.consumer.committed_errors = {2: KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)}
        assert await rig.restorer.committed_best_effort([0, 1, 2]) == {0: 5, 1: 300}

    async def test_the_partitions_with_nothing_committed_are_looked_up_together(self) -> None:
        """One lookup for all of them (the worker's admin client: one request), not one
        per partition; a lookup that fails leaves them out, to be asked for again."""
        rig = Rig()
        rig.consumer.committed_offsets = {0: 5}
        rig.consumer.low_watermarks = {1: 300, 2: 7}
        assert await rig.restorer.committed_best_effort([0, 1, 2]) == {0: 5, 1: 300, 2: 7}
        assert rig.log_starts_asked == [[1, 2]]
        rig.log_starts_raise = BrokerUnavailable("list offsets: no answer within 10 s")
        assert await rig.restorer.committed_best_effort([0, 1, 2]) == {}
        rig.consumer.committed_offsets = {0: 5, 1: 6, 2: 8}
        assert await rig.restorer.committed_best_effort([0, 1, 2]) == {0: 5, 1: 6, 2: 8}
        assert rig.log_starts_asked == [[1, 2], [1, 2]]  # none to look up once all are committed

    async def test_offsets_that_could_not_be_looked_up_are_asked_for_again(self) -> None:
        rig = Rig()
        rig.consumer.committed_raises = KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
        rig.restorer.begin({0})
        await rig.restorer.install(await rig.restored())
        assert rig.partitions[0].ready and rig.partitions[0].next_offset is None
        rig.consumer.committed_raises = None
        rig.consumer.committed_offsets = {0: 11}
        rig.restorer.learn_missing_offsets(now=1e9)
        await eventually(lambda: rig.partitions[0].next_offset == 11, timeout=5, what="offset learned")

    async def test_a_resync_never_takes_an_unknown_offset_for_none(self) -> None:
        rig = Rig()
        rig.restorer.resync_lookup_deadline_s = 0.5
        rig.consumer.committed_errors = {1: KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)}
        with pytest.raises(KafkaException):
            await rig.restorer.committed_offsets({0, 1})
        assert rig.consumer.committed_asked >= 2  # "not now" is asked again, until the deadline

    async def test_a_resync_asks_again_while_the_cluster_cannot_answer(self) -> None:
        """Right after a broker restart the lookup times out, or the coordinator is still
        loading: the resync waits for the answer instead of ending the worker's loop."""
        rig = Rig()
        rig.consumer.committed_raises = KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
        lookup = asyncio.create_task(rig.restorer.committed_offsets({0, 1}))
        await eventually(lambda: rig.consumer.committed_asked >= 2, timeout=5, what="asked again")
        assert not lookup.done()
        rig.consumer.committed_raises = None
        rig.consumer.committed_errors = {1: KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)}
        asked = rig.consumer.committed_asked
        await eventually(lambda: rig.consumer.committed_asked > asked, timeout=5, what="asked while loading")
        assert not lookup.done()
        rig.consumer.committed_errors = {}
        rig.consumer.committed_offsets = {0: 9, 1: 4}
        assert await asyncio.wait_for(lookup, 5) == {0: 9, 1: 4}

    async def test_a_resync_lookup_refused_for_good_is_not_asked_again(self) -> None:
        rig = Rig()
        rig.consumer.committed_raises = KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
        with pytest.raises(KafkaException):
            await asyncio.wait_for(rig.restorer.committed_offsets({0}), 5)
        assert rig.consumer.committed_asked == 1

    async def test_a_resync_rewinds_to_the_committed_offsets_and_restores_afresh(self) -> None:
        rig = Rig()
        rig.partitions.claim({0, 1})
        old = rig.partitions.incarnations()
        rig.consumer.committed_offsets = {0: 17}
        committed = await rig.restorer.committed_offsets({0, 1})
        await rig.restorer.rewind_and_restore({0, 1}, committed)
        assert sorted(rig.consumer.seeks) == [(0, 17), (1, OFFSET_BEGINNING)]
        assert rig.partitions[0].resume_at == 17 and rig.partitions[1].resume_at == OFFSET_BEGINNING
        assert all(rig.partitions[n].incarnation != old[n] for n in (0, 1))
        done = await rig.restored()
        assert done.incarnations == rig.partitions.incarnations()


class TestCarriedOverAResync:
    async def test_answers_lost_with_a_failed_transaction_are_applied_to_the_state_read_back(self) -> None:
        """A submit's job id comes once: after a resync it is applied again, so the job is
        not resubmitted (a duplicate) or failed as unknown."""
        rig = Rig()
        now = rig.time.now_ms()
        intent = accepted("s", now).evolve(phase=Phase.SUBMITTING, submit_attempt=1, next_action_at_ms=0)
        rig.stored[0] = [intent]
        rig.partitions.claim({0})
        answer = CallAnswered(0, 1, "s", SubmitAnswered("job-7", "Queued", Status.QUEUED))
        await rig.restorer.rewind_and_restore({0}, {0: 3}, {0: Carried(answers=[answer])})
        await rig.restorer.install(await rig.restored())
        job = rig.partitions[0].jobs["s"]
        assert job.phase is Phase.ACTIVE and job.vendor_job_id == "job-7" and not job.possible_duplicate
        assert (0, "s") in rig.outbox.states and rig.outbox.records  # SUBMITTED, written again
        (journaled,) = rig.outbox.answers  # kept until this state is durable too
        assert journaled.incarnation == rig.partitions[0].incarnation

    async def test_a_durable_intent_whose_call_never_started_is_withdrawn(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        before = accepted("w", now)
        intent = before.evolve(phase=Phase.SUBMITTING, submit_attempt=1, next_action_at_ms=0)
        rig.stored[0] = [intent]
        rig.partitions.claim({0})
        unsent = call_for(intent, rig.conn, CallKind.SUBMIT)
        unsent.before = before
        await rig.restorer.rewind_and_restore({0}, {0: 3}, {0: Carried(unsent=[unsent])})
        await rig.restorer.install(await rig.restored())
        job = rig.partitions[0].jobs["w"]
        assert job.phase is Phase.PENDING and job.submit_attempt == 0
        assert rig.outbox.states[(0, "w")] == job

    async def test_an_unsent_call_is_not_withdrawn_over_a_state_that_moved_on(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        before = accepted("m", now)
        intent = before.evolve(phase=Phase.SUBMITTING, submit_attempt=1, next_action_at_ms=0)
        rig.stored[0] = [intent.evolve(submit_attempt=2, possible_duplicate=True)]
        rig.partitions.claim({0})
        unsent = call_for(intent, rig.conn, CallKind.SUBMIT)
        unsent.before = before
        await rig.restorer.rewind_and_restore({0}, {0: 3}, {0: Carried(unsent=[unsent])})
        await rig.restorer.install(await rig.restored())
        assert rig.partitions[0].jobs["m"].submit_attempt == 2 and rig.outbox.states == {}

    async def test_what_was_carried_for_a_partition_that_left_is_dropped(self) -> None:
        rig = Rig()
        rig.stored[0] = [accepted("s", rig.time.now_ms()).evolve(phase=Phase.SUBMITTING, submit_attempt=1)]
        rig.partitions.claim({0})
        answer = CallAnswered(0, 1, "s", SubmitAnswered("job-7", "Queued", Status.QUEUED))
        await rig.restorer.rewind_and_restore({0}, {0: 3}, {0: Carried(answers=[answer])})
        done = await rig.restored()
        rig.restorer.forget({0})
        await rig.restorer.install(done)
        assert rig.partitions[0].jobs["s"].phase is Phase.SUBMITTING


class TestLateAnswers:
    """A call that outlives a resync of its partition (it ran past the drain deadline)
    answers for an incarnation that was rebuilt by this same worker: only this worker
    ever sees that answer, so it is applied to the state read back."""

    def test_only_incarnations_this_worker_rebuilt_are_remembered(self) -> None:
        rig = Rig()
        first = rig.partitions.claim({0})[0]
        second = rig.partitions.claim({0})[0]  # a resync
        assert rig.partitions.rebuilt(0, first) is rig.partitions[0]
        assert rig.partitions.rebuilt(0, second) is None  # the current one is not "rebuilt"
        rig.partitions.drop({0})
        rig.partitions.claim({0})  # taken over afresh: the old calls' answers belong to no one here
        assert rig.partitions.rebuilt(0, first) is None and rig.partitions.rebuilt(0, second) is None

    def test_remembered_rebuilds_are_bounded(self) -> None:
        rig = Rig()
        oldest = rig.partitions.claim({0})[0]
        for _ in range(REMEMBERED_REBUILDS + 1):
            rig.partitions.claim({0})
        assert rig.partitions.rebuilt(0, oldest) is None
        assert rig.partitions.rebuilt(0, rig.partitions[0].incarnation - 1) is not None

    async def test_a_late_submit_answer_reaches_the_state_being_restored(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        rig.stored[0] = [accepted("s", now).evolve(phase=Phase.SUBMITTING, submit_attempt=1, next_action_at_ms=0)]
        old = rig.partitions.claim({0})[0]
        await rig.restorer.rewind_and_restore({0}, {0: 3})  # the resync; the submit is still running
        part = rig.partitions.rebuilt(0, old)
        assert part is not None and not part.ready
        rig.restorer.late_answer(part, CallAnswered(0, old, "s", SubmitAnswered("job-9", "Queued", Status.QUEUED)))
        await rig.restorer.install(await rig.restored())
        job = rig.partitions[0].jobs["s"]
        assert job.phase is Phase.ACTIVE and job.vendor_job_id == "job-9" and not job.possible_duplicate

    async def test_a_late_submit_answer_after_the_restore_is_applied_at_once(self) -> None:
        rig = Rig()
        now = rig.time.now_ms()
        rig.stored[0] = [accepted("s", now).evolve(phase=Phase.SUBMITTING, submit_attempt=1, next_action_at_ms=0)]
        old = rig.partitions.claim({0})[0]
        await rig.restorer.rewind_and_restore({0}, {0: 3})
        await rig.restorer.install(await rig.restored())
        part = rig.partitions.rebuilt(0, old)
        assert part is not None and part.ready
        rig.restorer.late_answer(part, CallAnswered(0, old, "s", SubmitAnswered("job-9", "Queued", Status.QUEUED)))
        job = rig.partitions[0].jobs["s"]
        assert job.vendor_job_id == "job-9" and (0, "s") in rig.outbox.states
