"""Running one vendor call, and turning how it ended into an engine event.

A call never raises into the loop: every failure becomes a ``CallFailed`` that says
whether retrying can help, how long the vendor asked us to wait, and whether the vendor
may have acted anyway (a submit whose answer never came may have created a job).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog
from opentelemetry.trace import Span

from worker.engine.model import CallFailed, CallKind, ErrorInfo, Event, JobState, PollAnswered
from worker.engine.policy import usable_retry_after
from worker.errors import ExportWorkerError, RateLimited, ResultStoreError, VendorBusy, VendorError, VendorUnavailable
from worker.limits import (
    DEFAULT_MAX_RETRY_AFTER_S,
    MAX_CHECKSUM_BYTES,
    MAX_ERROR_CODE_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_FILE_FORMAT_BYTES,
    MAX_FILE_URL_BYTES,
    MAX_VENDOR_JOB_ID_BYTES,
    MAX_VENDOR_STATUS_BYTES,
    clip,
    utf8_len,
)
from worker.observability import call_context
from worker.redaction import redact_text
from worker.runtime.connections import Connection
from worker.tracing import Tracing, fail, span_id_of
from worker.vendors import Cancellable, JobSpec, VendorAdapter

log = structlog.get_logger("export_worker")

# How long a connection waits after a 429 that named no Retry-After.
DEFAULT_RATE_LIMIT_WAIT_S = 1.0


@dataclass(slots=True)
class Call:
    """A vendor call a job's engine step asked for."""

    partition: int
    incarnation: int
    request_id: str
    kind: CallKind
    connection: Connection
    state: JobState
    has_slot: bool  # holds one of the connection's call slots
    intent: bool = False  # counted among the connection's unstarted submit intents
    before: JobState | None = None  # the job before the step that asked for the call
    span_id: str | None = None  # tracing on: the call's span, once it ran

    @property
    def withdrawable(self) -> bool:
        """A submit that has not started can be taken back: writing the job's state from
        before its intent says it was never sent (the next owner then owes no reconcile
        and flags no duplicate)."""
        return self.kind is CallKind.SUBMIT and self.before is not None


async def run_call(call: Call, tracing: Tracing | None = None) -> Event:
    """Make the call; its answer, or its failure, as the event to step the job with.
    With tracing on, inside the call's span (its id is left in ``call.span_id``)."""
    state = call.state
    if tracing is None or not tracing.enabled or state.trace is None:
        return await _run(call)
    # Tracing never costs a call: if it fails, the call runs (or ends) untraced.
    try:
        if tracing.records(state.trace):
            scope = tracing.call(f"{state.vendor} {call.kind.value}", state.trace, _call_attributes(call))
        else:  # the sampler drops the job's trace: no span, its context only (log lines)
            scope = tracing.within(state.trace)
        span = scope.__enter__()
    except Exception:
        log.exception("tracing a vendor call failed; the call runs untraced", request_id=state.request_id)
        return await _run(call)
    try:
        _traced(_note_wait, span, state)
        event = await _run(call)
        if span.is_recording():  # a sampled-out trace keeps no link to follow
            _traced(_describe, span, event)
            call.span_id = span_id_of(span)
        return event
    finally:
        _traced(scope.__exit__, None, None, None)


def _traced(record: Callable[..., object], *args: Any) -> None:
    """One tracing step of a call; a failure is logged, never the call's."""
    try:
        record(*args)
    except Exception:
        log.exception("tracing a vendor call failed")


def _note_wait(span: Span, state: JobState) -> None:
    """The wait since the job's previous call (on this worker or its last owner)."""
    assert state.trace is not None
    if state.trace.last_call_at_ms is not None and span.is_recording():
        waited_s = max(0, int(time.time() * 1000) - state.trace.last_call_at_ms) / 1000
        span.add_event("waited", {"export.wait_s": waited_s, "export.poll_attempt": state.poll_attempt})


def _call_attributes(call: Call) -> dict[str, Any]:
    state = call.state
    attempt = state.submit_attempt if call.kind is CallKind.SUBMIT else state.poll_attempt
    attributes: dict[str, Any] = {
        "export.request_id": state.request_id,
        "export.vendor": state.vendor,
        "export.connection": call.connection.name,
        "export.operation": call.kind.value,
        "export.attempt": attempt,
    }
    if state.vendor_job_id is not None:
        attributes["export.vendor_job_id"] = state.vendor_job_id
    return attributes


def _describe(span: Span, event: Event) -> None:
    status = getattr(event, "status", None)
    if status is not None:
        span.set_attribute("export.status", status.value)
    vendor_status = getattr(event, "vendor_status", None)
    if vendor_status is not None:
        span.set_attribute("export.vendor_status", vendor_status)
    if isinstance(event, CallFailed):
        span.set_attribute("error.type", event.error.code)
        span.set_attribute("export.outcome_unknown", event.outcome_unknown)
        if event.retry_after_s is not None:
            span.set_attribute("export.retry_after_s", event.retry_after_s)
        fail(span, event.error.message)  # already redacted and clipped (``_error``)


async def _run(call: Call) -> Event:
    state = call.state
    try:
        spec = JobSpec.from_json(
            state.request_id,
            state.tenant,
            state.connection,
            state.job_json,
            correlation_id=state.correlation_id,
            submit_attempt=state.submit_attempt,
            labels=state.labels,
        )
        # Each call runs in its own task, whose context copy ends with it: set once, no reset.
        call_context.set(
            {
                "request_id": state.request_id,
                "vendor": state.vendor,
                "connection": call.connection.name,
                "vendor_job_id": state.vendor_job_id,
            }
        )
        event = await _ask(call.connection.adapter, call.kind, spec, state)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _log_failure(call, exc)
        return failure_event(call.kind, exc)
    event = bounded(call.kind, event)
    raw = getattr(event, "vendor_status", None)
    if raw is not None and type(event) is not CallFailed:
        # A handful of vendor status names, held by every open job: keep one copy.
        event = replace(event, vendor_status=sys.intern(raw))  # type: ignore[arg-type]
    return event


def bounded(kind: CallKind, event: Event) -> Event:
    """The answer with every vendor text the job keeps within its bound (``worker.limits``):
    status names and error texts are clipped; a job id or link too long to keep whole is
    refused as a malformed answer (clipped, it would name another job or file)."""
    job_id = getattr(event, "vendor_job_id", None)
    if job_id is not None and utf8_len(job_id) > MAX_VENDOR_JOB_ID_BYTES:
        return _too_long(kind, "job id", utf8_len(job_id), MAX_VENDOR_JOB_ID_BYTES)
    changes: dict[str, object] = {}
    status = getattr(event, "vendor_status", None)
    if status is not None and utf8_len(status) > MAX_VENDOR_STATUS_BYTES:
        changes["vendor_status"] = clip(status, MAX_VENDOR_STATUS_BYTES)
    if isinstance(event, PollAnswered):
        file = event.file
        if file is not None:
            if utf8_len(file.url) > MAX_FILE_URL_BYTES:
                return _too_long(kind, "download link", utf8_len(file.url), MAX_FILE_URL_BYTES)
            kept = replace(
                file,
                format=clip(file.format, MAX_FILE_FORMAT_BYTES),
                sha256=file.sha256 if utf8_len(file.sha256) <= MAX_CHECKSUM_BYTES else None,
            )
            if kept != file:
                changes["file"] = kept
        if event.error is not None:
            changes["error"] = bounded_error(event.error)
    if isinstance(event, CallFailed):
        changes["error"] = bounded_error(event.error)
    return replace(event, **changes) if changes else event  # type: ignore[type-var]


def bounded_error(error: ErrorInfo) -> ErrorInfo:
    code, message = clip(error.code, MAX_ERROR_CODE_BYTES), clip(error.message, MAX_ERROR_MESSAGE_BYTES)
    if code is error.code and message is error.message:
        return error
    return ErrorInfo(code, message, error.retryable)


def _too_long(kind: CallKind, what: str, size: int, limit: int) -> CallFailed:
    return CallFailed(
        kind=kind,
        error=ErrorInfo("malformed_answer", f"the vendor's {what} is {size} bytes; at most {limit} are kept", True),
        # A submit the vendor answered did create a job, even if it cannot be followed.
        outcome_unknown=kind is CallKind.SUBMIT,
    )


async def _ask(adapter: VendorAdapter, kind: CallKind, spec: JobSpec, state: JobState) -> Event:
    if kind is CallKind.SUBMIT:
        return await adapter.submit(spec)
    if kind is CallKind.RECONCILE:
        return await adapter.reconcile(spec)
    assert state.vendor_job_id is not None
    if kind is CallKind.CANCEL:
        if not isinstance(adapter, Cancellable):
            raise VendorError(f"{state.vendor} has no cancel call")
        return await adapter.cancel(spec, state.vendor_job_id)
    return await adapter.poll(spec, state.vendor_job_id)


def failure_event(kind: CallKind, exc: Exception) -> CallFailed:
    """How a call that raised ``exc`` ended, for the engine."""
    if isinstance(exc, VendorError):
        return CallFailed(
            kind=kind,
            error=_error(exc.code, exc.message, exc.retriable),
            retry_after_s=usable_retry_after(exc.retry_after),
            outcome_unknown=exc.outcome_unknown,
            busy=isinstance(exc, VendorBusy),
        )
    if isinstance(exc, ExportWorkerError):  # e.g. the result store refused an artifact: retry later
        code = "result_store_error" if isinstance(exc, ResultStoreError) else "worker_error"
        return CallFailed(
            kind=kind, error=_error(code, str(exc), exc.retriable), outcome_unknown=kind is CallKind.SUBMIT
        )
    # An adapter bug must not stop the worker; the job retries.
    return CallFailed(
        kind=kind,
        error=_error("adapter_error", f"{type(exc).__name__}: {exc}", True),
        outcome_unknown=kind is CallKind.SUBMIT,
    )


def _error(code: str, text: str, retriable: bool) -> ErrorInfo:
    """An error as the job keeps it: secrets redacted, the text within its bound."""
    return ErrorInfo(code, clip(redact_text(text), MAX_ERROR_MESSAGE_BYTES), retriable)


def connection_wait_s(event: Event, maximum: float = DEFAULT_MAX_RETRY_AFTER_S) -> float | None:
    """How long the whole connection must wait after this answer, if at all: after a 429
    the vendor's Retry-After when it is a finite delay (else a default), after a 5xx only
    when it carries a usable Retry-After; at most ``maximum``."""
    if not isinstance(event, CallFailed):
        return None
    wait = usable_retry_after(event.retry_after_s)
    if event.error.code == RateLimited.code:
        return min(wait if wait is not None else DEFAULT_RATE_LIMIT_WAIT_S, maximum)
    if event.error.code == VendorUnavailable.code and wait is not None and wait > 0:
        return min(wait, maximum)
    return None


def _log_failure(call: Call, exc: Exception) -> None:
    state = call.state
    if isinstance(exc, VendorError):
        log.info(
            "vendor call failed",
            request_id=state.request_id,
            vendor=state.vendor,
            connection=call.connection.name,
            operation=call.kind.value,
            code=exc.code,
            error=clip(exc.message, MAX_ERROR_MESSAGE_BYTES),
        )
    elif isinstance(exc, ExportWorkerError):
        log.warning(
            "vendor call failed",
            request_id=state.request_id,
            operation=call.kind.value,
            error=clip(str(exc), MAX_ERROR_MESSAGE_BYTES),
        )
    else:
        log.exception("vendor adapter crashed", request_id=state.request_id, operation=call.kind.value)
