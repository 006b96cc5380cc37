"""Property tests: no sequence of events (including crashes) loses a job, moves a
terminal job, breaks the status sequence, or calls the vendor without a durable intent."""

from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from worker.engine.machine import Context, step
from worker.engine.model import (
    TERMINAL,
    Announce,
    CallFailed,
    CallKind,
    CallVendor,
    CancelAnswered,
    ErrorInfo,
    Event,
    FileInfo,
    JobState,
    Phase,
    PollAnswered,
    PublishStatus,
    ReconcileAnswered,
    RequestInfo,
    RequestReceived,
    RequestRejected,
    Restored,
    Status,
    SubmitAnswered,
    TimerFired,
)
from worker.engine.policy import Policy, UnknownOutcome

START = 1_700_000_000_000

poll_statuses = st.sampled_from(
    [Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED]
)
errors = st.builds(
    CallFailed,
    kind=st.just(CallKind.POLL),
    error=st.builds(
        ErrorInfo,
        code=st.sampled_from(["vendor_unavailable", "vendor_rejected"]),
        message=st.just("x"),
        retryable=st.booleans(),
    ),
    retry_after_s=st.none() | st.floats(0, 120),
    outcome_unknown=st.booleans(),
    busy=st.booleans(),
)


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.state: JobState | None = None
        self.persisted: JobState | None = None
        self.in_flight: CallKind | None = None
        self.last_sequence = 0
        self.terminal_status: Status | None = None
        self.policy = Policy()
        self.forgotten = False
        self.announced = 0  # re-announced FileReady effects so far

    # ---- the step under test -------------------------------------------------------
    def apply(self, event: Event, u: float = 0.5) -> None:
        before = self.state
        if before is None and self.forgotten:
            # Past retention the id is unknown again: a new request starts a new history.
            self.last_sequence = 0
            self.terminal_status = None
            self.forgotten = False
        tr = step(before, event, Context(self.now, u, self.policy))
        self.announced += sum(1 for e in tr.effects if isinstance(e, Announce) and e.reannounced)
        published = [e for e in tr.effects if isinstance(e, PublishStatus)]
        new_calls = [e for e in tr.effects if isinstance(e, CallVendor)]
        if published or any(isinstance(e, Announce) for e in tr.effects):
            assert tr.persist, "events without persisting the state would break sequences after a crash"
        for e in published:
            assert e.sequence == self.last_sequence + 1, "sequence must grow by exactly one"
            self.last_sequence = e.sequence
            if self.terminal_status is not None and e.status is not Status.DUPLICATE:
                # Terminal jobs move only SUCCEEDED -> EXPIRED, or answer a cancel/duplicate.
                assert (self.terminal_status, e.status) == (Status.SUCCEEDED, Status.EXPIRED) or (
                    e.status is self.terminal_status
                ), f"terminal {self.terminal_status} moved to {e.status}"
        assert len(new_calls) <= 1
        if new_calls:
            assert self.in_flight is None, "a second call while one is in flight"
            if new_calls[0].kind is CallKind.SUBMIT:
                assert tr.persist and tr.state is not None and tr.state.phase is Phase.SUBMITTING
            self.in_flight = new_calls[0].kind
        if tr.persist:
            self.persisted = tr.state
        if tr.state is None and before is not None:
            self.forgotten = True
        self.state = tr.state
        if self.state is not None:
            assert self.state.sequence == self.last_sequence
            done = self.state.phase is Phase.DONE and self.state.status in TERMINAL
            if done and (self.terminal_status is None or self.state.status is Status.EXPIRED):
                self.terminal_status = self.state.status
            if self.state.status is Status.REJECTED:
                self.terminal_status = None  # a rejected id may be sent again, fixed

    # ---- rules -----------------------------------------------------------------------
    @rule(
        offset=st.integers(0, 3),
        cancel=st.booleans(),
        partition=st.integers(0, 1),
        replay_of=st.sampled_from([None, "r", "other"]),
    )
    def request(self, offset: int, cancel: bool, partition: int, replay_of: str | None) -> None:
        info = RequestInfo("r", "t", "c", "itron", "{}", START, partition, offset, cancel=cancel, replay_of=replay_of)
        tr_before = self.announced
        self.apply(RequestReceived(info))
        if replay_of != "r":
            assert self.announced == tr_before, "only an operator's replay (replay_of = its own id) re-announces"

    @rule(offset=st.integers(0, 3))
    def rejected(self, offset: int) -> None:
        self.apply(RequestRejected("r", "t", "c", "itron", 0, offset, ErrorInfo("invalid_request", "bad", False)))

    @precondition(lambda self: self.state is not None and self.in_flight is None and self.state.next_action_at_ms > 0)
    @rule(u=st.floats(0, 0.999))
    def timer(self, u: float) -> None:
        assert self.state is not None
        self.now = max(self.now, self.state.next_action_at_ms)
        self.apply(TimerFired(), u)

    @precondition(lambda self: self.in_flight is CallKind.SUBMIT)
    @rule(ok=st.booleans(), failure=errors)
    def submit_answer(self, ok: bool, failure: CallFailed) -> None:
        self.in_flight = None
        self.apply(SubmitAnswered("job", "New", Status.QUEUED) if ok else replace(failure, kind=CallKind.SUBMIT))

    @precondition(lambda self: self.in_flight is CallKind.POLL)
    @rule(status=poll_statuses, with_file=st.booleans(), ok=st.booleans(), failure=errors)
    def poll_answer(self, status: Status, with_file: bool, ok: bool, failure: CallFailed) -> None:
        self.in_flight = None
        file = FileInfo("https://x", "csv", self.now + 10_000) if with_file else None
        self.apply(PollAnswered(status.value, status, file=file) if ok else failure)

    @precondition(lambda self: self.in_flight is CallKind.RECONCILE)
    @rule(known=st.booleans(), found=st.booleans(), ok=st.booleans(), failure=errors)
    def reconcile_answer(self, known: bool, found: bool, ok: bool, failure: CallFailed) -> None:
        self.in_flight = None
        answer = ReconcileAnswered(known, "job" if found else None, "pending", Status.QUEUED)
        self.apply(answer if ok else replace(failure, kind=CallKind.RECONCILE))

    @precondition(lambda self: self.in_flight is CallKind.CANCEL)
    @rule(done=st.booleans(), ok=st.booleans(), failure=errors)
    def cancel_answer(self, done: bool, ok: bool, failure: CallFailed) -> None:
        self.in_flight = None
        answer = CancelAnswered("CANCELLED" if done else "CANCELLING", Status.CANCELLED if done else Status.RUNNING)
        self.apply(answer if ok else replace(failure, kind=CallKind.CANCEL))

    @precondition(lambda self: self.persisted is not None)
    @rule(u=st.floats(0, 0.999))
    def crash_and_restore(self, u: float) -> None:
        """The worker dies: in-flight calls are lost, memory reverts to what was persisted."""
        self.in_flight = None
        self.state = self.persisted
        self.apply(Restored(), u)

    @rule(seconds=st.integers(1, 10_000_000))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1000

    @rule(reconcile=st.booleans(), fail=st.booleans(), cancel=st.booleans())
    def vendor_capabilities(self, reconcile: bool, fail: bool, cancel: bool) -> None:
        self.policy = replace(
            self.policy,
            can_reconcile=reconcile,
            can_cancel=cancel,
            unknown_outcome=UnknownOutcome.FAIL if fail else UnknownOutcome.RESUBMIT,
        )

    # ---- invariants ------------------------------------------------------------------
    @invariant()
    def open_jobs_are_never_lost(self) -> None:
        """Every open job has either a call in flight or a time to act again."""
        if self.state is not None and self.state.open:
            assert self.in_flight is not None or self.state.next_action_at_ms > 0

    @invariant()
    def the_start_of_an_error_run_is_durable(self) -> None:
        """A new owner restores the same failing_since_ms, so max_failing_s counts from the
        first transient error however often the job changes hands."""
        if self.state is not None:
            assert self.persisted is not None
            assert self.state.failing_since_ms == self.persisted.failing_since_ms

    @invariant()
    def done_jobs_are_scheduled_for_expiry_or_forgetting(self) -> None:
        if self.state is not None and not self.state.open:
            assert self.state.next_action_at_ms > 0


TestJobMachine = JobMachine.TestCase
TestJobMachine.settings = settings(
    max_examples=int(os.environ.get("ENGINE_EXAMPLES", "300")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
