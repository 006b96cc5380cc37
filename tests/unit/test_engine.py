"""The pure state machine, one behaviour per test (no I/O, time passed in)."""

from __future__ import annotations

from dataclasses import replace

from worker.engine.machine import Context, step
from worker.engine.model import (
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
    Transition,
)
from worker.engine.policy import Policy, UnknownOutcome

NOW = 1_700_000_000_000
POLICY = Policy(jitter=0.0, link_ttl_s=3600, retention_s=86400, max_failing_s=60)


def ctx(now: int = NOW, policy: Policy = POLICY, u: float = 0.5) -> Context:
    return Context(now, u, policy)


def request(
    rid: str = "r1", *, offset: int = 10, partition: int = 0, cancel: bool = False, replay_of: str | None = None
) -> RequestInfo:
    return RequestInfo(
        request_id=rid,
        tenant="acme",
        connection="itron",
        vendor="itron",
        job_json='{"type":"ItronBatchRequest"}',
        requested_at_ms=NOW,
        partition=partition,
        offset=offset,
        cancel=cancel,
        replay_of=replay_of,
    )


def statuses(tr: Transition) -> list[Status]:
    return [e.status for e in tr.effects if isinstance(e, PublishStatus)]


def previous(tr: Transition) -> list[Status | None]:
    return [e.previous_status for e in tr.effects if isinstance(e, PublishStatus)]


def calls(tr: Transition) -> list[CallKind]:
    return [e.kind for e in tr.effects if isinstance(e, CallVendor)]


def accepted() -> JobState:
    tr = step(None, RequestReceived(request()), ctx())
    assert tr.state is not None
    return tr.state


def submitting(policy: Policy = POLICY) -> JobState:
    tr = step(accepted(), TimerFired(), ctx(policy=policy))
    assert tr.state is not None
    return tr.state


def active() -> JobState:
    tr = step(submitting(), SubmitAnswered("job-1", "New", Status.QUEUED), ctx())
    assert tr.state is not None
    return tr.state


def succeeded(expires_at_ms: int | None = NOW + 10_000) -> JobState:
    file = FileInfo("https://blob/x.zip?se=1", "csv.zip", expires_at_ms)
    tr = step(active(), PollAnswered("Success", Status.SUCCEEDED, file=file), ctx())
    assert tr.state is not None
    return tr.state


class Run:
    """One job driven through events, keeping what a worker would have persisted: a
    takeover continues from the last persisted state, as a new owner restores it."""

    def __init__(self, state: JobState) -> None:
        self.state: JobState = state
        self.persisted: JobState = state

    def step(self, event: Event, now: int) -> JobState:
        tr = step(self.state, event, ctx(now))
        assert tr.state is not None
        self.state = tr.state
        if tr.persist:
            self.persisted = tr.state
        return tr.state

    def takeover(self, now: int) -> None:
        self.state = self.persisted
        self.step(Restored(), now)


class TestNewRequests:
    def test_new_request_is_accepted_persisted_and_due_now(self) -> None:
        """A new request publishes ACCEPTED with sequence 1 and is due for submit at once."""
        tr = step(None, RequestReceived(request()), ctx())
        assert tr.persist and tr.state is not None
        assert statuses(tr) == [Status.ACCEPTED]
        assert tr.state.phase is Phase.PENDING and tr.state.sequence == 1
        assert tr.state.next_action_at_ms == NOW

    def test_first_event_of_a_request_follows_nothing(self) -> None:
        """ACCEPTED, or REJECTED, is the first status an id has: no previous status."""
        assert previous(step(None, RequestReceived(request()), ctx())) == [None]
        assert previous(step(None, RequestReceived(request(cancel=True)), ctx())) == [None]
        rejected = RequestRejected("r1", "acme", "nope", "", 0, 5, ErrorInfo("unknown_connection", "no such", False))
        assert previous(step(None, rejected, ctx())) == [None]

    def test_the_second_event_follows_the_first(self) -> None:
        """The event after ACCEPTED (SUBMITTED, once the submit is answered) names ACCEPTED."""
        tr = step(None, RequestReceived(request()), ctx())
        assert tr.state is not None
        tr = step(tr.state, TimerFired(), ctx())
        assert tr.state is not None
        tr = step(tr.state, SubmitAnswered("job-1", "New", Status.QUEUED), ctx())
        assert statuses(tr) == [Status.SUBMITTED] and previous(tr) == [Status.ACCEPTED]

    def test_a_new_rejection_of_a_rejected_id_follows_its_rejection(self) -> None:
        """A cancel or a rejected request for an id whose earlier request was rejected
        starts again from that REJECTED (the sequence goes on too)."""
        reason = ErrorInfo("unknown_connection", "no such", False)
        rejected = step(None, RequestRejected("r1", "acme", "nope", "", 0, 5, reason), ctx()).state
        assert rejected is not None
        cancel = step(rejected, RequestReceived(request(offset=6, cancel=True)), ctx())
        assert statuses(cancel) == [Status.REJECTED] and previous(cancel) == [Status.REJECTED]
        again = step(rejected, RequestRejected("r1", "acme", "nope", "", 0, 7, reason), ctx())
        assert statuses(again) == [Status.REJECTED] and previous(again) == [Status.REJECTED]
        assert again.state is not None and again.state.sequence == 2

    def test_timer_on_pending_writes_intent_before_submitting(self) -> None:
        """The submit call comes with a persisted SUBMITTING intent (attempt 1), never without."""
        tr = step(accepted(), TimerFired(), ctx())
        assert tr.state is not None and tr.state.phase is Phase.SUBMITTING
        assert tr.persist and calls(tr) == [CallKind.SUBMIT]
        assert tr.state.submit_attempt == 1
        assert tr.state.next_action_at_ms == 0  # no timer while the call is in flight

    def test_submit_answer_publishes_submitted_and_schedules_first_poll(self) -> None:
        tr = step(submitting(), SubmitAnswered("job-1", "New", Status.QUEUED), ctx())
        assert tr.state is not None and tr.state.phase is Phase.ACTIVE
        assert statuses(tr) == [Status.SUBMITTED] and tr.state.sequence == 2
        assert tr.state.vendor_job_id == "job-1"
        assert tr.state.next_action_at_ms == NOW + int(POLICY.first_poll_s * 1000)


class TestPolling:
    def test_status_change_is_published_once(self) -> None:
        """RUNNING is published on the first answer that says so, not on the next identical one."""
        first = step(active(), PollAnswered("Running", Status.RUNNING), ctx())
        assert statuses(first) == [Status.RUNNING] and first.persist
        assert first.state is not None
        again = step(first.state, PollAnswered("Running", Status.RUNNING), ctx(NOW + 1000))
        assert statuses(again) == [] and not again.persist
        assert again.state is not None and again.state.next_action_at_ms > NOW + 1000

    def test_poll_interval_grows_to_the_maximum(self) -> None:
        state = active()
        delays = []
        now = NOW
        for _ in range(12):
            tr = step(state, PollAnswered("Running", Status.RUNNING), ctx(now))
            assert tr.state is not None
            delays.append(tr.state.next_action_at_ms - now)
            state = tr.state
        assert delays[1] > delays[0]
        assert max(delays) == int(POLICY.poll_max_s * 1000)

    def test_success_announces_one_file_and_ends_the_job(self) -> None:
        file = FileInfo("https://blob/x.zip", "csv.zip", None)
        tr = step(active(), PollAnswered("Success", Status.SUCCEEDED, file=file), ctx())
        assert tr.state is not None and tr.state.phase is Phase.DONE
        assert statuses(tr) == [Status.SUCCEEDED]
        announces = [e for e in tr.effects if isinstance(e, Announce)]
        assert len(announces) == 1 and not announces[0].reannounced
        # An unknown link expiry gets the configured default.
        assert announces[0].file.expires_at_ms == NOW + 3600 * 1000

    def test_success_without_a_link_keeps_polling(self) -> None:
        """file-ready only with a non-empty link: a bare Success is not the end."""
        tr = step(active(), PollAnswered("Success", Status.SUCCEEDED, file=None), ctx())
        assert tr.state is not None and tr.state.phase is Phase.ACTIVE
        assert statuses(tr) == [] and tr.state.next_action_at_ms > NOW

    def test_vendor_failure_ends_failed_with_its_message(self) -> None:
        error = ErrorInfo("vendor_failed", "disk full", False)
        tr = step(active(), PollAnswered("Failed", Status.FAILED, error=error), ctx())
        assert tr.state is not None and tr.state.status is Status.FAILED and tr.state.phase is Phase.DONE
        published = [e for e in tr.effects if isinstance(e, PublishStatus)]
        assert published[0].error == error

    def test_transient_poll_errors_back_off_then_give_up(self) -> None:
        """5xx keeps the job alive with growing delays, and fails it only after max_failing_s."""
        state = active()
        err = CallFailed(CallKind.POLL, ErrorInfo("vendor_unavailable", "HTTP 503", True))
        tr = step(state, err, ctx(NOW))
        assert tr.state is not None and tr.state.phase is Phase.ACTIVE and tr.state.failing_since_ms == NOW
        tr = step(tr.state, err, ctx(NOW + 30_000))
        assert tr.state is not None and tr.state.phase is Phase.ACTIVE
        tr = step(tr.state, err, ctx(NOW + 61_000))
        assert tr.state is not None and tr.state.status is Status.FAILED
        assert "gave up after 61 s" in (tr.state.error.message if tr.state.error else "")

    def test_retry_after_is_never_shortened(self) -> None:
        err = CallFailed(CallKind.POLL, ErrorInfo("rate_limited", "429", True), retry_after_s=42)
        tr = step(active(), err, ctx())
        assert tr.state is not None and tr.state.next_action_at_ms >= NOW + 42_000

    def test_the_error_budget_counts_from_the_first_failure_across_takeovers(self) -> None:
        """Each new owner restores what was persisted; the job still fails max_failing_s after
        its first transient error, not after the first one its current owner saw."""
        err = CallFailed(CallKind.POLL, ErrorInfo("vendor_unavailable", "HTTP 503", True))
        run = Run(active())
        run.step(err, NOW)
        for t in (NOW + 20_000, NOW + 40_000):
            run.takeover(t)
            run.step(err, t)
        run.takeover(NOW + 61_000)
        final = run.step(err, NOW + 61_000)
        assert final.status is Status.FAILED and final.error is not None
        assert "gave up after 61 s" in final.error.message

    def test_only_the_start_of_an_error_run_is_written(self) -> None:
        """Retries within a run change nothing durable: one state record per run, not per error."""
        err = CallFailed(CallKind.POLL, ErrorInfo("vendor_unavailable", "HTTP 503", True))
        first = step(active(), err, ctx(NOW))
        assert first.persist and first.state is not None and first.state.failing_since_ms == NOW
        second = step(first.state, err, ctx(NOW + 5_000))
        assert not second.persist and second.state is not None and second.state.failing_since_ms == NOW

    def test_the_end_of_an_error_run_is_written_so_a_takeover_starts_a_new_budget(self) -> None:
        err = CallFailed(CallKind.POLL, ErrorInfo("vendor_unavailable", "HTTP 503", True))
        run = Run(active())
        run.step(err, NOW)
        run.step(PollAnswered("New", Status.QUEUED), NOW + 10_000)  # same status: nothing published
        run.takeover(NOW + 100_000)
        after = run.step(err, NOW + 100_000)
        assert after.phase is Phase.ACTIVE and after.failing_since_ms == NOW + 100_000

    def test_a_successful_answer_resets_the_error_run(self) -> None:
        err = CallFailed(CallKind.POLL, ErrorInfo("vendor_unavailable", "HTTP 503", True))
        tr = step(active(), err, ctx(NOW))
        assert tr.state is not None
        tr = step(tr.state, PollAnswered("Running", Status.RUNNING), ctx(NOW + 1000))
        assert tr.state is not None and tr.state.failing_since_ms == 0


class TestSubmitFailures:
    def test_rate_limited_submit_returns_to_pending_without_flag(self) -> None:
        """A 429 means the vendor did nothing: retry plainly, no possible_duplicate."""
        err = CallFailed(CallKind.SUBMIT, ErrorInfo("rate_limited", "429", True), retry_after_s=5)
        tr = step(submitting(), err, ctx())
        assert tr.state is not None and tr.state.phase is Phase.PENDING and tr.persist
        assert not tr.state.possible_duplicate
        assert tr.state.next_action_at_ms >= NOW + 5000

    def test_lost_submit_answer_keeps_the_intent(self) -> None:
        """A timeout after sending may have created a job: stay SUBMITTING to reconcile."""
        err = CallFailed(CallKind.SUBMIT, ErrorInfo("vendor_unavailable", "timeout", True), outcome_unknown=True)
        tr = step(submitting(), err, ctx())
        assert tr.state is not None and tr.state.phase is Phase.SUBMITTING and tr.state.next_action_at_ms > NOW

    def test_rejected_submit_fails_the_request(self) -> None:
        err = CallFailed(CallKind.SUBMIT, ErrorInfo("vendor_rejected", "HTTP 400: bad filter", False))
        tr = step(submitting(), err, ctx())
        assert tr.state is not None and tr.state.status is Status.FAILED
        assert statuses(tr) == [Status.FAILED]

    def test_busy_vendor_queues_instead_of_failing(self) -> None:
        """Elastic Path's one-billing-run-per-store refusal waits and tries again."""
        err = CallFailed(CallKind.SUBMIT, ErrorInfo("vendor_busy", "409", True), busy=True)
        tr = step(submitting(), err, ctx())
        assert tr.state is not None and tr.state.phase is Phase.PENDING and tr.state.status is Status.ACCEPTED
        assert tr.state.next_action_at_ms >= NOW + POLICY.busy_retry_s * 800
        assert statuses(tr) == []


class TestRestoreAndReconcile:
    def test_restored_intent_is_reconciled_when_the_vendor_can_tell(self) -> None:
        policy = replace(POLICY, can_reconcile=True)
        state = step(submitting(policy), Restored(), ctx(policy=policy)).state
        assert state is not None and state.next_action_at_ms >= NOW
        tr = step(state, TimerFired(), ctx(state.next_action_at_ms, policy))
        assert calls(tr) == [CallKind.RECONCILE] and not tr.persist

    def test_reconcile_finding_the_job_resumes_it_without_a_duplicate(self) -> None:
        policy = replace(POLICY, can_reconcile=True)
        tr = step(submitting(policy), ReconcileAnswered(True, "job-9", "pending", Status.QUEUED), ctx(policy=policy))
        assert tr.state is not None and tr.state.vendor_job_id == "job-9" and tr.state.phase is Phase.ACTIVE
        assert not tr.state.possible_duplicate and statuses(tr) == [Status.SUBMITTED]

    def test_reconcile_finding_nothing_submits_again_unflagged_once_the_lost_submit_has_settled(self) -> None:
        policy = replace(POLICY, can_reconcile=True)
        settled = NOW + round(policy.submit_settle_s * 1000)
        tr = step(submitting(policy), ReconcileAnswered(True, None), ctx(settled, policy))
        assert tr.state is not None and calls(tr) == [CallKind.SUBMIT] and tr.persist
        assert tr.state.submit_attempt == 2 and not tr.state.possible_duplicate

    def test_reconcile_finding_nothing_too_soon_asks_again_after_the_settle_window(self) -> None:
        """A submit the client gave up on may still be running at the vendor: "no such
        job" one second later is not proof that it will not appear."""
        policy = replace(POLICY, can_reconcile=True)
        settled = NOW + round(policy.submit_settle_s * 1000)
        tr = step(submitting(policy), ReconcileAnswered(True, None), ctx(NOW + 1000, policy))
        assert tr.state is not None and calls(tr) == [] and tr.state.submit_attempt == 1
        assert tr.state.next_action_at_ms == settled and tr.state.phase is Phase.SUBMITTING
        again = step(tr.state, TimerFired(), ctx(settled, policy))
        assert calls(again) == [CallKind.RECONCILE]

    def test_the_settle_window_counts_from_when_the_submit_was_lost_not_decided(self) -> None:
        """A submit that waited for a slot long after its intent, then timed out: the
        window starts at the timeout, so a straggling job is still found."""
        policy = replace(POLICY, can_reconcile=True)
        settle_ms = round(policy.submit_settle_s * 1000)
        lost_at = NOW + 2 * settle_ms
        timeout = CallFailed(CallKind.SUBMIT, ErrorInfo("vendor_unavailable", "timed out", True), outcome_unknown=True)
        failed = step(submitting(policy), timeout, ctx(lost_at, policy)).state
        assert failed is not None and failed.phase is Phase.SUBMITTING
        tr = step(failed, ReconcileAnswered(True, None), ctx(lost_at + 1000, policy))
        assert tr.state is not None and calls(tr) == [] and tr.state.next_action_at_ms == lost_at + settle_ms
        tr = step(tr.state, ReconcileAnswered(True, None), ctx(lost_at + settle_ms, policy))
        assert calls(tr) == [CallKind.SUBMIT]

    def test_after_a_restore_the_settle_window_counts_from_the_restore(self) -> None:
        """The previous owner may have sent the submit just before it died."""
        policy = replace(POLICY, can_reconcile=True)
        settle_ms = round(policy.submit_settle_s * 1000)
        restored_at = NOW + 10 * settle_ms
        restored = step(submitting(policy), Restored(), ctx(restored_at, policy)).state
        assert restored is not None
        tr = step(restored, ReconcileAnswered(True, None), ctx(restored_at + 1000, policy))
        assert calls(tr) == [] and tr.state is not None and tr.state.next_action_at_ms == restored_at + settle_ms

    def test_vendor_that_cannot_tell_resubmits_flagged(self) -> None:
        """Itron and Unicommerce: resubmit and say possible_duplicate on every later event."""
        tr = step(submitting(), TimerFired(), ctx())
        assert tr.state is not None and tr.state.possible_duplicate and calls(tr) == [CallKind.SUBMIT]
        assert tr.persist and tr.state.submit_attempt == 2

    def test_fail_policy_ends_the_request_clearly(self) -> None:
        policy = replace(POLICY, unknown_outcome=UnknownOutcome.FAIL)
        tr = step(submitting(policy), TimerFired(), ctx(policy=policy))
        assert tr.state is not None and tr.state.status is Status.FAILED
        assert tr.state.error is not None and tr.state.error.code == "submit_outcome_unknown"

    def test_restored_overdue_polls_are_spread_not_bunched(self) -> None:
        state = replace(active(), next_action_at_ms=NOW - 50_000)
        dues = {step(state, Restored(), ctx(u=u)).state.next_action_at_ms for u in (0.0, 0.5, 0.99)}  # type: ignore[union-attr]
        assert len(dues) == 3 and min(dues) >= NOW


class TestDuplicatesAndReplays:
    def test_redelivery_of_the_same_message_changes_nothing(self) -> None:
        tr = step(active(), RequestReceived(request(offset=10)), ctx())
        assert tr.effects == () and not tr.persist

    def test_duplicate_of_an_open_request_creates_no_job(self) -> None:
        state = active()
        tr = step(state, RequestReceived(request(offset=11)), ctx())
        assert statuses(tr) == [Status.DUPLICATE] and calls(tr) == []
        assert tr.state is not None and tr.state.status is Status.SUBMITTED  # its own status is unchanged
        assert tr.state.sequence == state.sequence + 1

    def test_an_operators_replay_of_a_finished_request_reannounces_its_file(self) -> None:
        """`replay` marks the request as a replay of itself (replay_of = its own id)."""
        tr = step(succeeded(), RequestReceived(request(offset=99, replay_of="r1")), ctx())
        announces = [e for e in tr.effects if isinstance(e, Announce)]
        assert len(announces) == 1 and announces[0].reannounced
        assert statuses(tr) == [Status.DUPLICATE] and calls(tr) == []

    def test_a_plain_duplicate_of_a_finished_request_announces_nothing(self) -> None:
        """A producer sending the id again gets DUPLICATE, saying its file was announced and
        the link is still valid, and no second FileReady."""
        tr = step(succeeded(), RequestReceived(request(offset=99)), ctx())
        assert not [e for e in tr.effects if isinstance(e, Announce)]
        published = [e for e in tr.effects if isinstance(e, PublishStatus)]
        assert [p.status for p in published] == [Status.DUPLICATE] and calls(tr) == []
        note = published[0].error
        assert note is not None and note.code == "already_announced" and "still valid" in note.message
        assert tr.state is not None and tr.state.status is Status.SUCCEEDED

    def test_a_replay_of_another_request_is_a_plain_duplicate(self) -> None:
        """A forced replay (replay_of = the original id) sent again does not re-announce."""
        tr = step(succeeded(), RequestReceived(request(offset=99, replay_of="the-original")), ctx())
        assert not [e for e in tr.effects if isinstance(e, Announce)]
        assert statuses(tr) == [Status.DUPLICATE]

    def test_a_new_request_marked_as_its_own_replay_keeps_no_replay_of(self) -> None:
        """replay_of in the state names the request a forced replay re-exports, never itself."""
        tr = step(None, RequestReceived(request(replay_of="r1")), ctx())
        assert tr.state is not None and tr.state.replay_of is None and statuses(tr) == [Status.ACCEPTED]
        forced = step(None, RequestReceived(request("r1~rX", replay_of="r1")), ctx())
        assert forced.state is not None and forced.state.replay_of == "r1"

    def test_replay_after_the_link_expired_says_so(self) -> None:
        state = succeeded(expires_at_ms=NOW + 1000)
        expired = step(state, TimerFired(), ctx(NOW + 2000))
        assert statuses(expired) == [Status.EXPIRED]
        assert expired.state is not None
        tr = step(expired.state, RequestReceived(request(offset=99)), ctx(NOW + 3000))
        published = [e for e in tr.effects if isinstance(e, PublishStatus)]
        assert [p.status for p in published] == [Status.DUPLICATE]
        assert published[0].error is not None and published[0].error.code == "link_expired"
        assert not [e for e in tr.effects if isinstance(e, Announce)]

    def test_rejected_id_can_come_back_fixed_with_sequence_continuing(self) -> None:
        rejected = step(
            None,
            RequestRejected("r1", "acme", "nope", "", 0, 5, ErrorInfo("unknown_connection", "no such", False)),
            ctx(),
        ).state
        assert rejected is not None and rejected.status is Status.REJECTED and rejected.sequence == 1
        tr = step(rejected, RequestReceived(request(offset=6)), ctx())
        assert statuses(tr) == [Status.ACCEPTED] and previous(tr) == [Status.REJECTED]
        assert tr.state is not None and tr.state.sequence == 2 and tr.state.phase is Phase.PENDING


class TestRetention:
    def test_finished_job_expires_then_is_forgotten_after_retention(self) -> None:
        """SUCCEEDED -> EXPIRED at the (default) link expiry, then a tombstone after retention."""
        state = succeeded(expires_at_ms=None)
        assert state.next_action_at_ms == NOW + 3_600_000  # link_ttl_s default applied
        expired = step(state, TimerFired(), ctx(NOW + 3_600_000))
        assert statuses(expired) == [Status.EXPIRED] and expired.state is not None
        assert expired.state.next_action_at_ms == NOW + 86_400_000
        tr = step(expired.state, TimerFired(), ctx(NOW + 86_400_000))
        assert tr.state is None and tr.persist  # a tombstone

    def test_failed_job_is_forgotten_after_retention(self) -> None:
        error = ErrorInfo("vendor_failed", "x", False)
        failed = step(active(), PollAnswered("Failed", Status.FAILED, error=error), ctx()).state
        assert failed is not None
        early = step(failed, TimerFired(), ctx(NOW + 1000))
        assert early.state is not None and early.effects == ()
        tr = step(failed, TimerFired(), ctx(NOW + 86_400_000))
        assert tr.state is None and tr.persist


class TestCancel:
    def test_cancel_before_submit_cancels_locally(self) -> None:
        tr = step(accepted(), RequestReceived(request(offset=20, cancel=True)), ctx())
        assert statuses(tr) == [Status.CANCELLED] and calls(tr) == []

    def test_cancel_of_an_active_job_calls_the_vendor(self) -> None:
        policy = replace(POLICY, can_cancel=True)
        tr = step(active(), RequestReceived(request(offset=20, cancel=True)), ctx(policy=policy))
        assert calls(tr) == [CallKind.CANCEL] and tr.state is not None and tr.state.cancel_requested
        done = step(tr.state, CancelAnswered("CANCELLED", Status.CANCELLED), ctx(policy=policy))
        assert statuses(done) == [Status.CANCELLED]

    def test_cancel_without_vendor_support_is_answered_not_ignored(self) -> None:
        tr = step(active(), RequestReceived(request(offset=20, cancel=True)), ctx())
        published = [e for e in tr.effects if isinstance(e, PublishStatus)]
        assert published and published[0].error is not None and published[0].error.code == "cancel_unsupported"

    def test_cancel_of_an_unknown_request_is_rejected(self) -> None:
        tr = step(None, RequestReceived(request(cancel=True)), ctx())
        assert statuses(tr) == [Status.REJECTED]
