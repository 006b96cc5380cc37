"""The vendor seam: one small Protocol per capability.

Adapters answer with the engine's own event records (SubmitAnswered, PollAnswered, ...)
and raise ``worker.errors.VendorError`` subclasses; no aiohttp type leaves ``vendors/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from worker.engine.model import CancelAnswered, PollAnswered, ReconcileAnswered, Status, SubmitAnswered


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
    """Submit a job, poll it, and find a job whose submit answer was lost."""

    vendor: ClassVar[str]
    can_reconcile: ClassVar[bool]

    async def submit(self, spec: JobSpec) -> SubmitAnswered: ...

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered: ...

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        """``known=False`` when the vendor offers no way to look a job up."""
        ...


@runtime_checkable
class Cancellable(Protocol):
    async def cancel(self, spec: JobSpec, vendor_job_id: str) -> CancelAnswered: ...


def map_status(table: dict[str, Status], vendor_status: str, *, default: Status = Status.RUNNING) -> Status:
    """Normalise a vendor status. An unknown status never ends a job: it reads as running."""
    return table.get(vendor_status.strip().lower(), default)
