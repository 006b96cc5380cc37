"""The outbox: what the next transaction writes, and the calls waiting for it."""

from __future__ import annotations

from tests.unit.runtime_fakes import FakeClock, accepted, call_for, connection
from worker.engine.model import CallKind, JobState, PollAnswered, Status
from worker.runtime.mailbox import CallAnswered
from worker.runtime.outbox import MAX_PENDING_RECORDS, Outbox, Outgoing
from worker.store.peek import OPEN_HEADER, open_header, read_open_header

NOW_MS = 1_700_000_000_000


def encode_in(number: int, state: JobState) -> bytes:
    return encode(state)


def encode(state: JobState) -> bytes:
    return f"{state.request_id}:{state.sequence}".encode()


def record(partition: int, topic: str = "status") -> Outgoing:
    return Outgoing(partition, topic, b"k", b"v", None)


class TestOutbox:
    def test_nothing_is_pending_until_something_arrives_and_the_wait_counts_from_the_first(self) -> None:
        time = FakeClock()
        outbox = Outbox(time.clock.monotonic)
        assert not outbox.pending and outbox.waited() == 0.0
        outbox.offsets_advanced()
        time.advance(2.0)
        outbox.add([record(0)])
        time.advance(1.0)
        assert outbox.pending and outbox.waited() == 3.0

    def test_a_job_changed_twice_is_written_once_with_its_last_state(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        first = accepted("r1", NOW_MS, partition=2)
        outbox.put_state(2, "r1", first)
        last = first.evolve(sequence=5)
        outbox.put_state(2, "r1", last)
        (written,) = outbox.take(encode_in, "jobs").records
        headers = [(OPEN_HEADER, open_header(last))]
        assert written == Outgoing(2, "jobs", b"r1", b"r1:5", 2, state=last, headers=headers)
        assert written.state is last

    def test_a_state_record_carries_its_open_peek_in_a_header(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        state = accepted("r1", NOW_MS, partition=0).evolve(next_action_at_ms=NOW_MS + 30_000)
        outbox.put_state(0, "r1", state)
        (written,) = outbox.take(encode_in, "jobs").records
        assert written.headers is not None and [name for name, _ in written.headers] == [OPEN_HEADER]
        assert read_open_header(written.headers[0][1]) == (state.phase, NOW_MS + 30_000, "itron", "ACCEPTED")

    def test_a_forgotten_job_is_written_as_a_tombstone_to_its_own_partition(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        outbox.put_state(1, "gone", None)
        assert outbox.take(encode_in, "jobs").records == [Outgoing(1, "jobs", b"gone", None, 1)]

    def test_take_hands_over_events_then_states_the_held_calls_and_answers_and_empties_it(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        state = accepted("r1", NOW_MS)
        call = call_for(state, connection(), CallKind.SUBMIT)
        answer = CallAnswered(0, 1, "r0", PollAnswered("Done", Status.RUNNING))
        outbox.put_state(0, "r1", state)
        outbox.add([record(0, "status")])
        outbox.hold(call)
        outbox.note_answer(answer)
        outbox.offsets_advanced()
        taken = outbox.take(encode_in, "jobs")
        assert [r.topic for r in taken.records] == ["status", "jobs"]
        assert taken.calls == [call] and taken.answers == [answer]
        assert not outbox.pending and outbox.calls == [] and outbox.answers == [] and outbox.since == 0.0

    def test_discard_drops_only_those_partitions_and_returns_their_calls_and_answers(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        conn = connection()
        kept_call = call_for(accepted("a", NOW_MS), conn, CallKind.SUBMIT, partition=0)
        lost_call = call_for(accepted("b", NOW_MS), conn, CallKind.SUBMIT, partition=1)
        kept_answer = CallAnswered(0, 1, "c", PollAnswered("Done", Status.RUNNING))
        lost_answer = CallAnswered(1, 1, "d", PollAnswered("Done", Status.RUNNING))
        outbox.add([record(0), record(1)])
        outbox.put_state(0, "a", accepted("a", NOW_MS))
        outbox.put_state(1, "b", accepted("b", NOW_MS))
        outbox.hold(kept_call)
        outbox.hold(lost_call)
        outbox.note_answer(kept_answer)
        outbox.note_answer(lost_answer)
        assert outbox.discard({1}) == ([lost_call], [lost_answer])
        taken = outbox.take(encode_in, "jobs")
        assert {r.partition for r in taken.records} == {0} and taken.calls == [kept_call]
        assert taken.answers == [kept_answer]

    def test_take_calls_hands_over_only_those_partitions_calls(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        conn = connection()
        calls = [call_for(accepted(r, NOW_MS), conn, CallKind.SUBMIT, partition=p) for r, p in (("a", 0), ("b", 1))]
        for call in calls:
            outbox.hold(call)
        assert outbox.take_calls({1}) == [calls[1]] and outbox.calls == [calls[0]]

    def test_it_is_full_at_the_backpressure_mark(self) -> None:
        outbox = Outbox(FakeClock().clock.monotonic)
        outbox.add([record(0)] * (MAX_PENDING_RECORDS - 1))
        assert not outbox.full
        outbox.put_state(0, "r1", None)
        assert outbox.full
