"""Everything waiting for the next transaction, and the vendor calls waiting for it to commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.engine.model import JobState, TraceContext
from worker.runtime.calls import Call
from worker.runtime.mailbox import CallAnswered
from worker.store.peek import state_headers

# Pending records past which the loop commits before taking more work (backpressure:
# the broker must catch up before memory grows further).
MAX_PENDING_RECORDS = 50_000


@dataclass(slots=True)
class Outgoing:
    partition: int  # the request partition the record belongs to
    topic: str
    key: bytes
    value: bytes | None
    target_partition: int | None  # explicit for export.jobs (co-partitioned), else keyed
    origin_offset: int | None = None  # a dead letter: the input offset it stands for
    state: JobState | None = None  # an export.jobs record: the state it holds (None: a tombstone)
    trace: TraceContext | None = None  # tracing on: the job's context (a status or file event)
    what: str = ""  # tracing on: what the event says (its status, or "FileReady")
    headers: list[tuple[str, bytes]] | None = None  # a forwarded request's trace context; a state's open peek


@dataclass(slots=True)
class Taken:
    """Everything the outbox held, for one batch."""

    records: list[Outgoing]
    calls: list[Call]
    answers: list[CallAnswered]


class Outbox:
    """Records (status, file and dead-letter events), the latest unwritten state of each
    job, whether input offsets moved, and the calls to start once all that is durable.

    A job changed twice before the next transaction needs one state record (the
    transaction is atomic and compaction keeps the last), so states are kept by job and
    encoded only when taken.

    It also keeps the vendor answers those records came from (``answers``): requests are
    read again and timers fire again after a failed transaction, but a vendor's answer
    comes once. If the transaction fails, the answers are applied again to the state
    read back from Kafka, so a submit's job id is not lost (and resubmitted).
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.records: list[Outgoing] = []
        self.states: dict[tuple[int, str], JobState | None] = {}  # None: delete (tombstone)
        self.calls: list[Call] = []  # e.g. a submit, whose SUBMITTING intent must be durable first
        self.answers: list[CallAnswered] = []  # applied since the last take, in order
        self.offsets_moved = False
        self.since = 0.0  # when the oldest thing still waiting arrived (monotonic), 0 if none

    @property
    def pending(self) -> bool:
        return bool(self.records or self.states or self.offsets_moved)

    @property
    def full(self) -> bool:
        return len(self.records) + len(self.states) >= MAX_PENDING_RECORDS

    def waited(self) -> float:
        """Seconds the oldest pending item has waited."""
        return self._monotonic() - self.since if self.since else 0.0

    def _touch(self) -> None:
        if not self.since:
            self.since = self._monotonic()

    def add(self, records: list[Outgoing]) -> None:
        if records:
            self._touch()
            self.records.extend(records)

    def put_state(self, partition: int, request_id: str, state: JobState | None) -> None:
        self._touch()
        self.states[(partition, request_id)] = state

    def offsets_advanced(self) -> None:
        self._touch()
        self.offsets_moved = True

    def hold(self, call: Call) -> None:
        """Start ``call`` only once the next transaction has committed."""
        self.calls.append(call)

    def note_answer(self, answer: CallAnswered) -> None:
        """``answer`` was applied: keep it until the records it produced are durable."""
        self.answers.append(answer)

    def take(self, encode_state: Callable[[int, JobState], bytes], jobs_topic: str) -> Taken:
        """Everything waiting, as records (states encoded now, with their partition), with
        the calls held for it and the answers it came from."""
        records, self.records = self.records, []
        states, self.states = self.states, {}
        for (number, request_id), state in states.items():
            if state is None:
                records.append(Outgoing(number, jobs_topic, request_id.encode(), None, number))
                continue
            value = encode_state(number, state)
            headers = state_headers(state)  # what a restore peeks of it, read without walking it
            records.append(
                Outgoing(number, jobs_topic, request_id.encode(), value, number, state=state, headers=headers)
            )
        calls, self.calls = self.calls, []
        answers, self.answers = self.answers, []
        self.offsets_moved = False
        self.since = 0.0
        return Taken(records, calls, answers)

    def take_calls(self, numbers: set[int]) -> list[Call]:
        """The held calls of these partitions, which will now not wait for the commit."""
        taken = [c for c in self.calls if c.partition in numbers]
        self.calls = [c for c in self.calls if c.partition not in numbers]
        return taken

    def discard(self, numbers: set[int]) -> tuple[list[Call], list[CallAnswered]]:
        """Drop these partitions' records and states; returns their held calls (which
        will now never start) and the answers the dropped records came from."""
        self.records = [o for o in self.records if o.partition not in numbers]
        self.states = {k: v for k, v in self.states.items() if k[0] not in numbers}
        answers = [a for a in self.answers if a.partition in numbers]
        self.answers = [a for a in self.answers if a.partition not in numbers]
        return self.take_calls(numbers), answers
