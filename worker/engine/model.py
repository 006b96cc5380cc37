"""Frozen records the engine works on: state, the events it reacts to, the effects it asks for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NO_LABELS: dict[str, str] = {}  # shared by every job without labels; never mutated


class Status(StrEnum):
    """Normalised status published on export.status (the ExportStatus enum)."""

    ACCEPTED = "ACCEPTED"  # request decoded, validated and stored; no vendor call yet
    REJECTED = "REJECTED"  # request cannot be run (invalid values, unknown connection)
    DUPLICATE = "DUPLICATE"  # a request id already known arrived again; no new vendor job
    SUBMITTED = "SUBMITTED"  # the vendor created a job and told us its id
    QUEUED = "QUEUED"  # the vendor holds the job, not started yet
    RUNNING = "RUNNING"  # the vendor is working on it
    SUCCEEDED = "SUCCEEDED"  # finished with a file or artifact (announced on export.files)
    FAILED = "FAILED"  # finished without a result, with an error
    CANCELLED = "CANCELLED"  # cancelled at the vendor
    EXPIRED = "EXPIRED"  # the announced link is no longer valid

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.REJECTED})


class Phase(StrEnum):
    """Where the worker is in its own protocol for a job (JobPhase in JobState)."""

    PENDING = "PENDING"  # accepted, waiting for a submit slot
    SUBMITTING = "SUBMITTING"  # intent durable; the vendor may or may not have a job
    ACTIVE = "ACTIVE"  # vendor job id known, polling
    DONE = "DONE"  # terminal; kept for duplicates and replays until retention ends


class CallKind(StrEnum):
    SUBMIT = "submit"
    POLL = "poll"
    RECONCILE = "reconcile"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Where a job's spans belong (OpenTelemetry, when tracing is on): the W3C context
    every span of the job is a child of (the producer's, else the worker's first span),
    and the last vendor call's span, which the next call (on any worker) links to."""

    traceparent: str
    tracestate: str | None = None
    last_span_id: str | None = None  # 16 hex digits
    last_call_at_ms: int | None = None  # when the last call's answer was applied

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]


@dataclass(frozen=True, slots=True)
class FileInfo:
    url: str
    format: str
    expires_at_ms: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class JobState:
    """Everything the worker knows about one request; persisted to export.jobs."""

    request_id: str
    tenant: str
    connection: str
    vendor: str
    job_json: str
    requested_at_ms: int
    origin_partition: int
    origin_offset: int
    phase: Phase
    status: Status
    sequence: int
    created_at_ms: int
    updated_at_ms: int
    correlation_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    replay_of: str | None = None
    vendor_status: str | None = None
    vendor_job_id: str | None = None
    submit_attempt: int = 0
    possible_duplicate: bool = False
    cancel_requested: bool = False
    next_action_at_ms: int = 0
    poll_attempt: int = 0
    failing_since_ms: int = 0
    file: FileInfo | None = None
    error: ErrorInfo | None = None
    finished_at_ms: int | None = None
    trace: TraceContext | None = None
    # In memory only (not in the JobState schema): when the latest submit's outcome became
    # unknown. A restore sets it to the restore time, which is never earlier.
    submit_unknown_at_ms: int = 0
    # In memory only: ``job_json`` holds just what the job's calls after acceptance read
    # (its adapter's ``poll_view``); the full body is in the partition's store, and the
    # writer puts it back into every record of this job.
    body_in_store: bool = False

    @property
    def open(self) -> bool:
        return self.phase is not Phase.DONE

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> JobState:
        """Build a state from a complete field dict (restore path: 100,000s of them),
        skipping the frozen dataclass's per-field ``__init__`` machinery."""
        return _build(values)

    def evolve(self, **changes: Any) -> JobState:
        """A copy with ``changes``, like ``dataclasses.replace`` but several times faster
        (no ``__init__``, no per-field loop): a state is copied on every step."""
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"JobState has no field {', '.join(sorted(unknown))}")
        return _evolve(self, changes)


_STATE_FIELDS: tuple[str, ...] = tuple(JobState.__dataclass_fields__)
_FIELD_SET = frozenset(_STATE_FIELDS)


def _straight_line(signature: str, value_of: Callable[[str], str], *preamble: str) -> Any:
    """Compile ``def <signature>`` that fills a new JobState slot by slot with the
    expression ``value_of(field)``: straight-line code generated from the dataclass's
    own field names, with no ``__init__`` and no per-field loop."""
    lines = [f"def {signature}:", "    new = new_state(JobState)", *(f"    {line}" for line in preamble)]
    lines += [f"    set_{i}(new, {value_of(name)})" for i, name in enumerate(_STATE_FIELDS)]
    lines.append("    return new")
    namespace: dict[str, Any] = {"JobState": JobState, "new_state": object.__new__}
    namespace.update({f"set_{i}": getattr(JobState, name).__set__ for i, name in enumerate(_STATE_FIELDS)})
    exec("\n".join(lines), namespace)
    return namespace[signature.partition("(")[0]]


_evolve = _straight_line("_evolve(state, changes)", lambda name: f"get({name!r}, state.{name})", "get = changes.get")
_build = _straight_line("_build(values)", lambda name: f"values[{name!r}]")


# ---- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A decoded, validated request (ingest's output)."""

    request_id: str
    tenant: str
    connection: str
    vendor: str
    job_json: str
    requested_at_ms: int
    partition: int
    offset: int
    correlation_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    replay_of: str | None = None
    cancel: bool = False
    trace: TraceContext | None = None

    @property
    def operator_replay(self) -> bool:
        """Re-published by an operator's ``replay`` of this very request, which marks it
        ``replay_of`` = its own id (``replay --force`` exports under a new id instead)."""
        return self.replay_of is not None and self.replay_of == self.request_id


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: RequestInfo


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """Decoded enough to know the request id, but it cannot be run."""

    request_id: str
    tenant: str
    connection: str
    vendor: str
    partition: int
    offset: int
    error: ErrorInfo
    correlation_id: str | None = None
    trace: TraceContext | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """``next_action_at_ms`` of the job is due and the connection has capacity."""


@dataclass(frozen=True, slots=True)
class Restored:
    """The state was just read back from export.jobs by a new owner."""


@dataclass(frozen=True, slots=True)
class SubmitAnswered:
    vendor_job_id: str
    vendor_status: str | None
    status: Status


@dataclass(frozen=True, slots=True)
class PollAnswered:
    vendor_status: str
    status: Status
    file: FileInfo | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class ReconcileAnswered:
    """What the vendor knows of a submit whose outcome we lost.

    ``known`` is False when the vendor cannot tell (no way to look a job up)."""

    known: bool
    vendor_job_id: str | None = None
    vendor_status: str | None = None
    status: Status | None = None


@dataclass(frozen=True, slots=True)
class CallFailed:
    kind: CallKind
    error: ErrorInfo
    retry_after_s: float | None = None
    outcome_unknown: bool = False  # the vendor may have acted (timeout, reset, 5xx)
    busy: bool = False  # the vendor will take it later (queue, do not count as failure)


@dataclass(frozen=True, slots=True)
class CancelAnswered:
    vendor_status: str | None
    status: Status


Event = (
    RequestReceived
    | RequestRejected
    | TimerFired
    | Restored
    | SubmitAnswered
    | PollAnswered
    | ReconcileAnswered
    | CallFailed
    | CancelAnswered
)


# ---- effects -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishStatus:
    """A JobStatusChanged to publish (fields beyond the state's own)."""

    status: Status
    previous_status: Status | None
    sequence: int
    occurred_at_ms: int
    vendor_status: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class Announce:
    """A FileReady to publish."""

    file: FileInfo
    produced_at_ms: int
    reannounced: bool = False


@dataclass(frozen=True, slots=True)
class CallVendor:
    """Run a vendor call once every record emitted so far is durable."""

    kind: CallKind


Emit = PublishStatus | Announce | CallVendor


@dataclass(frozen=True, slots=True)
class Transition:
    """What one step produced: the new state (None = forget it, write a tombstone),
    whether it changed and must be persisted, and the effects in order."""

    state: JobState | None
    persist: bool
    effects: tuple[Emit, ...] = ()

    @classmethod
    def unchanged(cls, state: JobState | None) -> Transition:
        return cls(state, False, ())
