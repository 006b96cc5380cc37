"""The vendor seam: one small Protocol per capability.

Adapters answer with the engine's own event records (SubmitAnswered, PollAnswered, ...)
and raise ``worker.errors.VendorError`` subclasses; no transport type leaves ``vendors/``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote

from worker.engine.model import CancelAnswered, PollAnswered, ReconcileAnswered, Status, SubmitAnswered
from worker.errors import MalformedAnswer, VendorRejected
from worker.redaction import excerpt

# Path segments that clients resolve instead of sending, escaped or not (yarl reads
# "%2E%2E" as ".."): no escaping keeps them inside the path they were put in.
DOT_SEGMENTS = frozenset({"", ".", ".."})
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What an adapter needs to know about a request (never credentials)."""

    request_id: str
    tenant: str
    connection: str
    job: dict[str, Any]
    correlation_id: str | None = None
    submit_attempt: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(
        cls,
        request_id: str,
        tenant: str,
        connection: str,
        job_json: str,
        *,
        correlation_id: str | None = None,
        submit_attempt: int = 1,
        labels: dict[str, str] | None = None,
    ) -> JobSpec:
        return cls(request_id, tenant, connection, json.loads(job_json), correlation_id, submit_attempt, labels or {})


class VendorAdapter(Protocol):
    """Submit a job, poll it, and find a job whose submit answer was lost.

    The contract on the request's job body (``spec.job``): ``submit`` and ``reconcile``
    run before the vendor accepted the job and may read all of it. Once the vendor
    accepted it (``vendor_job_id`` is known), ``poll`` and ``cancel``, and everything
    they call (paths, headers, reading answers, collecting results), read only what
    ``poll_view`` keeps. The runtime relies on this: it keeps only the view of an
    accepted job in memory and hands poll and cancel a spec whose ``job`` is that view
    (docs/design/state-store.md §3.6). Checked by tests/unit/test_poll_view_reads.py
    (statically) and tests/vendors/test_poll_view.py (against the simulators).
    """

    vendor: ClassVar[str]
    can_reconcile: ClassVar[bool]

    async def submit(self, spec: JobSpec) -> SubmitAnswered: ...

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered: ...

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        """``known=False`` when the vendor offers no way to look a job up."""
        ...

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        """The part of ``job`` that poll and cancel read: a pure function of ``job``,
        JSON-serialisable, small, and idempotent (``poll_view(poll_view(j)) ==
        poll_view(j)``), so equal views can be interned and shared. This default keeps
        the whole job, which is always safe; adapters narrow it with ``kept``."""
        return job


@runtime_checkable
class Cancellable(Protocol):
    async def cancel(self, spec: JobSpec, vendor_job_id: str) -> CancelAnswered: ...


def kept(job: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """``job`` restricted to ``fields``, in their order (so equal views serialise alike).
    A field the job lacks stays absent: ``view.get(name)`` answers as ``job.get(name)``."""
    return {name: job[name] for name in fields if name in job}


def map_status(table: dict[str, Status], vendor_status: str, *, default: Status = Status.RUNNING) -> Status:
    """Normalise a vendor status. An unknown status never ends a job: it reads as running."""
    return table.get(vendor_status.strip().lower(), default)


def segment(value: str, what: str) -> str:
    """``value`` (a request field, a config value or a vendor's job id) as exactly one
    URL path segment: ``/ ? # %`` and every other reserved character escaped.

    Raises VendorRejected for a value no escaping can keep in its place (``.``, ``..``,
    empty): ingest and the answer checks refuse those before they get here."""
    if value in DOT_SEGMENTS:
        raise VendorRejected(f"{what} {value!r} cannot be used as a URL path segment")
    return quote(value, safe="")


def job_id_of(value: object, *, operation: str, body: bytes, outcome_unknown: bool = False) -> str:
    """A job id from a vendor answer, refused (MalformedAnswer) unless it can name one
    job in a URL path: a non-empty text, no control characters, not ``.`` or ``..``.
    ``outcome_unknown`` for a submit's answer: the job exists even if its id is unusable."""
    if not isinstance(value, str) or value.strip() in DOT_SEGMENTS or CONTROL.search(value):
        raise MalformedAnswer(
            f"{operation}: the answer's job id {excerpt(repr(value))} cannot name a job: {excerpt(body)}",
            outcome_unknown=outcome_unknown,
        )
    return value
