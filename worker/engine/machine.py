"""``step(state, event, ctx) -> Transition``: the whole job protocol, pure.

Rules kept here and nowhere else:

* Every status change publishes one JobStatusChanged whose ``sequence`` is the state's
  previous sequence + 1, and persists the state in the same transition (the runtime
  writes both in one Kafka transaction), so sequences never repeat or skip.
* A submit is preceded by a persisted SUBMITTING intent; the runtime calls the vendor
  only after that record is durable. A restored intent is reconciled with the vendor,
  or handled by the connection's UnknownOutcome policy.
* A terminal job never moves again, except SUCCEEDED -> EXPIRED when its link expires
  and the final tombstone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from worker.engine.model import (
    Announce,
    CallFailed,
    CallKind,
    CallVendor,
    CancelAnswered,
    Emit,
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
from worker.engine.policy import (
    Policy,
    UnknownOutcome,
    at,
    duration_ms,
    poll_delay_s,
    retry_delay_s,
    spread,
    usable_retry_after,
)


@dataclass(frozen=True, slots=True)
class Context:
    """Inputs from outside the engine: the time, one uniform draw, the connection's policy."""

    now_ms: int
    u: float
    policy: Policy


def step(state: JobState | None, event: Event, ctx: Context) -> Transition:
    match event:
        case RequestReceived(request=request):
            return _on_request(state, request, ctx)
        case RequestRejected():
            return _on_rejected(state, event, ctx)
        case Restored():
            return _on_restored(state, ctx)
        case _ if state is None:
            return Transition.unchanged(None)
        case TimerFired():
            return _on_timer(state, ctx)
        case SubmitAnswered():
            return _on_submit_answered(state, event, ctx)
        case PollAnswered():
            return _on_poll_answered(state, event, ctx)
        case ReconcileAnswered():
            return _on_reconcile_answered(state, event, ctx)
        case CancelAnswered():
            return _on_cancel_answered(state, event, ctx)
        case CallFailed():
            return _on_call_failed(state, event, ctx)
    raise TypeError(f"unknown event {event!r}")


# ---- helpers -------------------------------------------------------------------------


class _Out:
    """Collects the effects of one transition while the state is rebuilt."""

    def __init__(self, state: JobState, ctx: Context) -> None:
        self.before = state
        self._state = state
        self._changes: dict[str, object] = {}
        self.ctx = ctx
        self.effects: list[Emit] = []
        self.persist = False
        self.forget = False  # end of retention: write a tombstone
        # A new job's first event follows what its request id had before (``opening``),
        # not the status the new state starts with.
        self._opening = False
        self._came_from: Status | None = None

    @classmethod
    def opening(cls, came_from: JobState | None, request: RequestInfo, ctx: Context, status: Status) -> _Out:
        """A new job for ``request``, at ``status``. ``came_from``: what its id had before,
        nothing or an earlier request's REJECTED, whose sequence it goes on with."""
        sequence = 0 if came_from is None else came_from.sequence
        out = cls(_new_state(request, ctx, sequence=sequence, status=status), ctx)
        out._opening = True
        out._came_from = None if came_from is None else came_from.status
        return out

    @property
    def state(self) -> JobState:
        """The state with every change so far (copied once, when first read)."""
        if self._changes:
            self._state = self._state.evolve(**self._changes)
            self._changes = {}
        return self._state

    def get(self, name: str) -> Any:
        """One field of the state with the changes so far, without copying it."""
        return self._changes[name] if name in self._changes else getattr(self._state, name)

    def update(self, **changes: object) -> None:
        self._changes.update(changes)

    def publish(
        self,
        status: Status,
        *,
        vendor_status: str | None = None,
        error: ErrorInfo | None = None,
        keep_status: bool = False,
    ) -> None:
        """Publish a status event. ``keep_status`` publishes feedback (DUPLICATE, a
        cancel that could not be done) without changing the job's own status."""
        if self._opening:
            previous, self._opening = self._came_from, False
        else:
            previous = self.get("status")
        sequence = self.get("sequence") + 1
        self.effects.append(
            PublishStatus(
                status=status,
                previous_status=previous,
                sequence=sequence,
                occurred_at_ms=self.ctx.now_ms,
                vendor_status=vendor_status if vendor_status is not None else self.get("vendor_status"),
                error=error,
            )
        )
        changes: dict[str, object] = {"sequence": sequence, "updated_at_ms": self.ctx.now_ms}
        if not keep_status:
            changes["status"] = status
        self.update(**changes)
        self.persist = True

    def finish(self, status: Status, *, error: ErrorInfo | None = None, vendor_status: str | None = None) -> None:
        now = self.ctx.now_ms
        if vendor_status is not None:
            self.update(vendor_status=vendor_status)
        self.publish(status, error=error)
        self.update(
            phase=Phase.DONE,
            finished_at_ms=now,
            error=error,
            next_action_at_ms=at(now, self.ctx.policy.retention_s),
        )

    def call(self, kind: CallKind) -> None:
        self.effects.append(CallVendor(kind))
        self.update(next_action_at_ms=0)

    def done(self) -> Transition:
        if self.forget:
            return Transition(None, True, ())
        if self.get("failing_since_ms") != self.before.failing_since_ms:
            # The start of a run of transient errors is durable, so a new owner measures
            # max_failing_s from the first error, not its own first; so is the run's end,
            # or a restored old start would fail the next run at once.
            self.persist = True
        return Transition(self.state, self.persist, tuple(self.effects))


def _new_state(request: RequestInfo, ctx: Context, *, sequence: int, status: Status) -> JobState:
    return JobState(
        request_id=request.request_id,
        tenant=request.tenant,
        connection=request.connection,
        vendor=request.vendor,
        job_json=request.job_json,
        requested_at_ms=request.requested_at_ms,
        origin_partition=request.partition,
        origin_offset=request.offset,
        phase=Phase.PENDING,
        status=status,
        sequence=sequence,
        created_at_ms=ctx.now_ms,
        updated_at_ms=ctx.now_ms,
        correlation_id=request.correlation_id,
        labels=request.labels,
        # The request a forced replay re-exports; an operator's replay of a request with
        # no state left names itself, which is no lineage.
        replay_of=None if request.operator_replay else request.replay_of,
        next_action_at_ms=ctx.now_ms,
        trace=request.trace,
    )


def _is_redelivery(state: JobState, partition: int, offset: int) -> bool:
    return state.origin_partition == partition and state.origin_offset == offset


def _link_valid(file: FileInfo | None, now_ms: int) -> bool:
    return file is not None and (file.expires_at_ms is None or file.expires_at_ms > now_ms)


def _give_up(out: _Out, failing_since_ms: int, error: ErrorInfo) -> bool:
    """End the job FAILED when transient errors have lasted longer than allowed."""
    if out.ctx.now_ms - failing_since_ms <= out.ctx.policy.max_failing_s * 1000:
        return False
    waited = (out.ctx.now_ms - failing_since_ms) / 1000
    out.finish(
        Status.FAILED,
        error=ErrorInfo(error.code, f"gave up after {waited:.0f} s of transient errors: {error.message}", False),
    )
    return True


# ---- requests ------------------------------------------------------------------------


def _on_request(state: JobState | None, request: RequestInfo, ctx: Context) -> Transition:
    if state is not None and _is_redelivery(state, request.partition, request.offset):
        return Transition.unchanged(state)
    if request.cancel:
        return _on_cancel_request(state, request, ctx)
    if state is None or state.status is Status.REJECTED:
        # A rejected request holds no vendor job: the same id may come back fixed.
        out = _Out.opening(state, request, ctx, Status.ACCEPTED)
        out.publish(Status.ACCEPTED)
        return out.done()
    return _on_duplicate(state, request, ctx)


def _on_duplicate(state: JobState, request: RequestInfo, ctx: Context) -> Transition:
    out = _Out(state, ctx)
    if state.status is Status.SUCCEEDED and _link_valid(state.file, ctx.now_ms):
        assert state.file is not None
        if request.operator_replay:
            # One FileReady per export; only an operator's replay announces it again.
            out.publish(Status.DUPLICATE, keep_status=True)
            out.effects.append(Announce(state.file, ctx.now_ms, reannounced=True))
            return out.done()
        note = ErrorInfo(
            "already_announced",
            "the export already SUCCEEDED and its file was announced; the link is still valid",
            False,
        )
        out.publish(Status.DUPLICATE, error=note, keep_status=True)
        return out.done()
    if state.open:
        note = ErrorInfo("duplicate_request", f"request is already {state.status.value}; no new vendor job", False)
    elif state.status in (Status.SUCCEEDED, Status.EXPIRED):
        note = ErrorInfo("link_expired", "the export finished but its link has expired; replay with --force", False)
    else:
        note = ErrorInfo("already_finished", f"the export already ended {state.status.value}", False)
    out.publish(Status.DUPLICATE, error=note, keep_status=True)
    return out.done()


def _on_cancel_request(state: JobState | None, request: RequestInfo, ctx: Context) -> Transition:
    if state is None or state.status is Status.REJECTED:
        out = _Out.opening(state, request, ctx, Status.REJECTED)
        out.finish(Status.REJECTED, error=ErrorInfo("nothing_to_cancel", "no export with this request id", False))
        return out.done()
    out = _Out(state, ctx)
    if not state.open:
        return Transition.unchanged(state)
    if state.phase is Phase.PENDING:
        out.finish(Status.CANCELLED, error=ErrorInfo("cancelled", "cancelled before it was submitted", False))
        return out.done()
    if not ctx.policy.can_cancel:
        out.publish(
            state.status,
            error=ErrorInfo("cancel_unsupported", f"{state.vendor} has no cancel call; the job keeps running", False),
        )
        return out.done()
    out.update(cancel_requested=True)
    out.persist = True
    if state.phase is Phase.ACTIVE and state.next_action_at_ms != 0:
        out.call(CallKind.CANCEL)
    return out.done()


def _on_rejected(state: JobState | None, event: RequestRejected, ctx: Context) -> Transition:
    if state is not None and _is_redelivery(state, event.partition, event.offset):
        return Transition.unchanged(state)
    if state is not None and state.status is not Status.REJECTED:
        out = _Out(state, ctx)
        out.publish(Status.DUPLICATE, error=event.error, keep_status=True)
        return out.done()
    request = RequestInfo(
        request_id=event.request_id,
        tenant=event.tenant,
        connection=event.connection,
        vendor=event.vendor,
        job_json="{}",
        requested_at_ms=ctx.now_ms,
        partition=event.partition,
        offset=event.offset,
        correlation_id=event.correlation_id,
        trace=event.trace,
    )
    out = _Out.opening(state, request, ctx, Status.REJECTED)
    out.finish(Status.REJECTED, error=event.error)
    return out.done()


# ---- timers and restore ---------------------------------------------------------------


def _on_restored(state: JobState | None, ctx: Context) -> Transition:
    if state is None:
        return Transition.unchanged(None)
    now = ctx.now_ms
    policy = ctx.policy
    # Overdue work is spread over a little time so a takeover does not hit the vendor
    # with every restored job at once.
    if state.phase is Phase.ACTIVE:
        window = poll_delay_s(policy, state.poll_attempt, 0.5)
        due = state.next_action_at_ms if state.next_action_at_ms > now else at(now, window * ctx.u)
    elif state.phase in (Phase.PENDING, Phase.SUBMITTING):
        due = at(now, spread(policy.retry_initial_s, 1.0, ctx.u))
    else:
        due = max(state.next_action_at_ms, now)
    if state.phase is Phase.SUBMITTING:
        # The submit in flight when the previous owner stopped was sent before now.
        return Transition(state.evolve(next_action_at_ms=due, submit_unknown_at_ms=now), False, ())
    if due == state.next_action_at_ms:
        return Transition(state, False, ())
    return Transition(state.evolve(next_action_at_ms=due), False, ())


def _on_timer(state: JobState, ctx: Context) -> Transition:
    out = _Out(state, ctx)
    policy = ctx.policy
    match state.phase:
        case Phase.PENDING:
            out.update(phase=Phase.SUBMITTING, submit_attempt=state.submit_attempt + 1, updated_at_ms=ctx.now_ms)
            out.persist = True
            out.call(CallKind.SUBMIT)
        case Phase.SUBMITTING:
            if policy.can_reconcile:
                out.call(CallKind.RECONCILE)
            else:
                _unknown_outcome(out)
        case Phase.ACTIVE:
            out.call(CallKind.CANCEL if state.cancel_requested and _cancel_pending(state) else CallKind.POLL)
        case Phase.DONE:
            _on_done_timer(out)
    return out.done()


def _cancel_pending(state: JobState) -> bool:
    return state.vendor_status not in ("CANCELLING", "CANCELLED")


def _unknown_outcome(out: _Out) -> None:
    """The vendor cannot say whether our lost submit created a job."""
    if out.ctx.policy.unknown_outcome is UnknownOutcome.FAIL:
        out.finish(
            Status.FAILED,
            error=ErrorInfo(
                "submit_outcome_unknown",
                "a submit's answer was lost and the vendor cannot be asked whether it created a job",
                False,
            ),
        )
        return
    out.update(
        submit_attempt=out.state.submit_attempt + 1,
        possible_duplicate=True,
        updated_at_ms=out.ctx.now_ms,
    )
    out.persist = True
    out.call(CallKind.SUBMIT)


def _on_done_timer(out: _Out) -> None:
    state = out.state
    now = out.ctx.now_ms
    file = state.file
    if state.status is Status.SUCCEEDED and file is not None and not _link_valid(file, now):
        out.publish(Status.EXPIRED, error=ErrorInfo("link_expired", "the download link has expired", False))
        finished = state.finished_at_ms or now
        out.update(next_action_at_ms=max(now + 1, finished + duration_ms(out.ctx.policy.retention_s)))
        return
    finished = state.finished_at_ms or state.updated_at_ms
    forget_at = finished + duration_ms(out.ctx.policy.retention_s)
    if now >= forget_at:
        out.forget = True
        return
    nxt = forget_at
    if state.status is Status.SUCCEEDED and file is not None and file.expires_at_ms is not None:
        nxt = min(nxt, file.expires_at_ms)
    out.update(next_action_at_ms=nxt)


# ---- vendor answers --------------------------------------------------------------------


def _schedule_poll(out: _Out, attempt: int, first: bool = False) -> None:
    policy = out.ctx.policy
    delay = spread(policy.first_poll_s, policy.jitter, out.ctx.u) if first else poll_delay_s(policy, attempt, out.ctx.u)
    out.update(next_action_at_ms=at(out.ctx.now_ms, delay), poll_attempt=attempt)


def _on_submit_answered(state: JobState, event: SubmitAnswered, ctx: Context) -> Transition:
    if state.phase is not Phase.SUBMITTING:
        return Transition.unchanged(state)
    out = _Out(state, ctx)
    _activate(out, event.vendor_job_id, event.vendor_status)
    return out.done()


def _activate(out: _Out, vendor_job_id: str, vendor_status: str | None) -> None:
    out.update(phase=Phase.ACTIVE, vendor_job_id=vendor_job_id, vendor_status=vendor_status, failing_since_ms=0)
    out.publish(Status.SUBMITTED)
    if out.state.cancel_requested:
        out.call(CallKind.CANCEL)
    else:
        _schedule_poll(out, 0, first=True)


def _on_reconcile_answered(state: JobState, event: ReconcileAnswered, ctx: Context) -> Transition:
    if state.phase is not Phase.SUBMITTING:
        return Transition.unchanged(state)
    out = _Out(state, ctx)
    if not event.known:
        _unknown_outcome(out)
    elif event.vendor_job_id:
        _activate(out, event.vendor_job_id, event.vendor_status)
    else:
        # Until the lost submit cannot land any more, "no such job" may only mean "not yet".
        lost_at = state.submit_unknown_at_ms or state.updated_at_ms
        settled_at = lost_at + duration_ms(ctx.policy.submit_settle_s)
        if ctx.now_ms < settled_at:
            out.update(next_action_at_ms=settled_at)
            return out.done()
        # The vendor says it has no such job: submitting again cannot duplicate it.
        out.update(submit_attempt=state.submit_attempt + 1, updated_at_ms=ctx.now_ms)
        out.persist = True
        out.call(CallKind.SUBMIT)
    return out.done()


def _on_poll_answered(state: JobState, event: PollAnswered, ctx: Context) -> Transition:
    if state.phase is not Phase.ACTIVE:
        return Transition.unchanged(state)
    out = _Out(state, ctx)
    out.update(failing_since_ms=0)
    if event.status is Status.SUCCEEDED:
        if event.file is None or not event.file.url:
            # Success without a link is not ready: keep asking, within the error budget.
            return _transient(
                out,
                ErrorInfo("success_without_link", f"vendor says {event.vendor_status} but gives no link", True),
                None,
                since=state.failing_since_ms or ctx.now_ms,
            )
        file = event.file
        if file.expires_at_ms is None:
            file = replace(file, expires_at_ms=at(ctx.now_ms, ctx.policy.link_ttl_s))
        out.update(file=file)
        out.finish(Status.SUCCEEDED, vendor_status=event.vendor_status)
        out.effects.append(Announce(file, ctx.now_ms))
        if file.expires_at_ms is not None:
            out.update(next_action_at_ms=min(out.state.next_action_at_ms, max(file.expires_at_ms, ctx.now_ms + 1)))
        return out.done()
    if event.status.terminal:
        out.finish(event.status, error=event.error, vendor_status=event.vendor_status)
        return out.done()
    if event.status is not state.status or event.vendor_status != state.vendor_status:
        out.update(vendor_status=event.vendor_status)
        out.publish(event.status)
    _schedule_poll(out, state.poll_attempt + 1)
    return out.done()


def _on_cancel_answered(state: JobState, event: CancelAnswered, ctx: Context) -> Transition:
    if state.phase is not Phase.ACTIVE:
        return Transition.unchanged(state)
    out = _Out(state, ctx)
    if event.status.terminal:
        out.finish(event.status, vendor_status=event.vendor_status)
        return out.done()
    out.update(vendor_status=event.vendor_status or "CANCELLING")
    out.publish(event.status)
    _schedule_poll(out, 0, first=True)
    return out.done()


def _transient(out: _Out, error: ErrorInfo, retry_after_s: float | None, *, since: int) -> Transition:
    if _give_up(out, since, error):
        return out.done()
    failures = max(0, (out.ctx.now_ms - since) // 1000).bit_length()
    out.update(
        failing_since_ms=since,
        next_action_at_ms=at(out.ctx.now_ms, retry_delay_s(out.ctx.policy, failures, out.ctx.u, retry_after_s)),
    )
    return out.done()


def _on_call_failed(state: JobState, event: CallFailed, ctx: Context) -> Transition:
    out = _Out(state, ctx)
    since = state.failing_since_ms or ctx.now_ms
    if not state.open:
        return Transition.unchanged(state)
    if event.kind is CallKind.CANCEL:
        if state.phase is not Phase.ACTIVE:
            return Transition.unchanged(state)
        out.update(cancel_requested=False)
        out.publish(state.status, error=ErrorInfo("cancel_failed", event.error.message, event.error.retryable))
        _schedule_poll(out, state.poll_attempt)
        return out.done()
    if event.kind is CallKind.SUBMIT and state.phase is Phase.SUBMITTING and event.busy:
        # Refused for now (e.g. one billing-run per store): no job exists; queue it.
        delay = max(ctx.policy.busy_retry_s, usable_retry_after(event.retry_after_s) or 0.0)
        out.update(phase=Phase.PENDING, next_action_at_ms=at(ctx.now_ms, spread(delay, 0.2, ctx.u)))
        out.persist = True
        return out.done()
    if not event.error.retryable:
        if event.kind is CallKind.RECONCILE and state.phase is Phase.SUBMITTING:
            _unknown_outcome(out)
        else:
            out.finish(Status.FAILED, error=event.error)
        return out.done()
    expected = {
        CallKind.SUBMIT: Phase.SUBMITTING,
        CallKind.RECONCILE: Phase.SUBMITTING,
        CallKind.POLL: Phase.ACTIVE,
    }[event.kind]
    if state.phase is not expected:
        return Transition.unchanged(state)
    if event.kind is CallKind.SUBMIT and not event.outcome_unknown:
        # The vendor did not act (429, refused connection, auth): a plain retry later.
        out.update(phase=Phase.PENDING)
        out.persist = True
    elif event.kind is CallKind.SUBMIT:
        out.update(submit_unknown_at_ms=ctx.now_ms)
    return _transient(out, event.error, event.retry_after_s, since=since)
