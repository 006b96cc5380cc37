"""Elastic Path Commerce Cloud subscription jobs (seed 003).

Submit ``POST /v2/subscriptions/jobs`` (JSON:API, ``external_ref`` = our request id),
poll ``GET /v2/subscriptions/jobs/{id}`` until ``success`` or ``failed``. There is no
file: the result is ``data.meta.report`` plus ``meta.timestamps``, which this adapter
writes as one JSON artifact to the result store and announces. Auth: OAuth2 client
credentials at ``POST /oauth/access_token``.

What the public reference says, and what is assumed:

* Create job answers 201, 400, 409 or 500. The 409 is the shared "Write conflict. Unable
  to perform the operation at this time" (``{"errors": [{"title": "Write Conflict",
  "status": "409"}]}``). Only one billing run and one payment run may run per store, so a
  409 on submit means "busy" and raises ``VendorBusy`` (the engine queues the request).
  ``external_ref`` is documented as unique, so a 409 may also mean that our own job
  already exists (a resubmit after a lost answer): the ref is looked up first and an
  existing job is adopted. A 422 whose words say a run is already in progress is read as
  busy too (assumed; the Jobs API documents no 422).
* List jobs filters with ``filter=eq(external_ref,<value>)``; filter values may only use
  ``A-Z a-z 0-9 $ - _ * .``, spaces and an encoded ``+``, and the Filtering guide offers no
  quoting, so other request ids (every ``--force`` replay id holds a ``~``) are found by
  paging the list (``page[limit]`` at most 100, ``page[offset]`` at most 10,000: 10,100
  jobs). Only a complete lookup may say "no such job": an accepted filter, or paging that
  reached a short last page. Paging cut off by the offset limit says "cannot tell", and
  the engine takes its unknown-outcome path instead of submitting a duplicate.
* Errors are JSON:API ``{"errors": [{"status", "title", "detail", "meta"}]}``, but the
  published examples attach a 500 object to 400 and 404 answers and give ``status`` as
  text or number: the HTTP status decides what happened, the body only supplies words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from worker.config import ConnectionConfig
from worker.engine.model import ErrorInfo, FileInfo, PollAnswered, ReconcileAnswered, Status, SubmitAnswered
from worker.errors import (
    AuthFailed,
    ConfigError,
    InvalidRequest,
    MalformedAnswer,
    VendorBusy,
    VendorRejected,
)
from worker.redaction import excerpt
from worker.result_store import ResultStore, artifact_key
from worker.vendors.base import JobSpec, VendorAdapter, job_id_of, kept, map_status, segment
from worker.vendors.http import Answer, BearerToken, VendorHttp, token_answer

JOBS = "/v2/subscriptions/jobs"
TOKEN = "/oauth/access_token"
JOB_TYPES: dict[str, str] = {"BILLING_RUN": "billing-run", "TAX_RUN": "tax-run", "PAYMENT_RUN": "payment-run"}
STATUSES: dict[str, Status] = {
    "pending": Status.QUEUED,
    "started": Status.RUNNING,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
}
# Characters a filter value may hold without quoting (the Filtering guide; '*' and the
# space are left out on purpose: a wildcard or a '+' could match someone else's job).
FILTER_SAFE = re.compile(r"[A-Za-z0-9$._-]+")
PAGE_LIMIT = 100
MAX_OFFSET = 10_000
# A 422 with these words reads as busy. Narrow on purpose: a busy answer is re-queued
# without an error budget, so a permanent refusal misread as busy would wait forever.
BUSY_WORDS = ("already running", "already in progress", "in progress", "write conflict")
# 4xx answers this adapter reads itself, for their JSON:API words; 401 (refresh and


def job_type_of(job: dict[str, Any]) -> str:
    """``BILLING_RUN`` (our enum) -> ``billing-run`` (the API's value)."""
    raw = str(job.get("job_type") or "").strip().upper().replace("-", "_")
    try:
        return JOB_TYPES[raw]
    except KeyError:
        raise InvalidRequest(
            "invalid_request", f"job_type {job.get('job_type')!r} is not one of {', '.join(JOB_TYPES)}"
        ) from None


def validate(job: dict[str, Any], now_ms: int, conn: ConnectionConfig) -> None:
    """Refuse what Elastic Path would refuse, before any call: an unknown job type."""
    job_type_of(job)


def error_words(body: bytes) -> list[str]:
    """``title: detail`` of each JSON:API error, whatever the body's shape (``errors`` as a
    list or one object, ``status`` as text or number, parts missing, or ``error``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    errors = data.get("errors", data.get("error"))
    if isinstance(errors, dict | str):
        errors = [errors]
    if not isinstance(errors, list):
        return []
    words = []
    for item in errors:
        if isinstance(item, str) and item.strip():
            words.append(item.strip())
        elif isinstance(item, dict):
            parts = [str(item[k]).strip() for k in ("title", "detail") if str(item.get(k) or "").strip()]
            if parts:
                words.append(": ".join(parts))
    return words


def describe(answer: Answer) -> str:
    """The vendor's words for an error answer, redacted and short."""
    words = error_words(answer.body)
    return excerpt("; ".join(words)) if words else excerpt(answer.body)


def _resource(answer: Answer, operation: str, *, outcome_unknown: bool = False) -> dict[str, Any]:
    """``data`` of a single-resource answer, with its ``id`` and ``attributes.status``."""
    try:
        data = answer.json_object().get("data")
    except MalformedAnswer as exc:
        exc.outcome_unknown = outcome_unknown
        raise
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("id"), str)
        or not data["id"]
        or not isinstance(data.get("attributes"), dict)
        or not isinstance(data["attributes"].get("status"), str)
        or not data["attributes"]["status"].strip()
    ):
        raise MalformedAnswer(
            f"{operation}: answer without data.id and data.attributes.status: {excerpt(answer.body)}",
            outcome_unknown=outcome_unknown,
        )
    job_id_of(data["id"], operation=operation, body=answer.body, outcome_unknown=outcome_unknown)
    return data


def _busy(answer: Answer) -> bool:
    """A 409 write conflict, or a 422 saying a run is in progress: refused for now."""
    return answer.status == 409 or (answer.status == 422 and any(w in describe(answer).lower() for w in BUSY_WORDS))


@dataclass(frozen=True, slots=True)
class Lookup:
    """Our job, if found; ``complete`` when every job that could carry the ref was seen
    (so ``job=None`` means "no such job", not "not among the pages read")."""

    job: dict[str, Any] | None
    complete: bool


def _ref_of(job: dict[str, Any]) -> object:
    attributes = job.get("attributes")
    return attributes.get("external_ref") if isinstance(attributes, dict) else None


def _status_of(job: dict[str, Any]) -> str:
    return str(job["attributes"]["status"]).strip()


class ElasticPathAdapter(VendorAdapter):
    vendor: ClassVar[str] = "elasticpath"
    can_reconcile: ClassVar[bool] = True
    extras: ClassVar[tuple[str, ...]] = ("result_store",)
    # Every operation name this adapter reports to metrics (a fixed set of labels).
    operations: ClassVar[frozenset[str]] = frozenset({"token", "submit", "poll", "reconcile"})

    def __init__(self, conn: ConnectionConfig, http: VendorHttp, *, result_store: ResultStore | None = None) -> None:
        if conn.client_id is None or conn.client_secret is None:
            raise ConfigError(f"connection {http.connection}: elasticpath needs client_id and client_secret")
        if result_store is None:
            raise ConfigError(f"connection {http.connection}: elasticpath needs a result store for its reports")
        self.conn = conn
        self.http = http
        self.results = result_store
        self._client_id = conn.client_id
        self._secret = conn.client_secret.resolve()
        self._token_url = f"{(conn.auth_url or conn.base_url).rstrip('/')}{TOKEN}"
        self.token = BearerToken(self._fetch_token)
        http.auth = self.token

    async def _fetch_token(self, http: VendorHttp, _refresh: str | None) -> tuple[str, float, str | None]:
        try:
            answer = await http.call(
                "POST",
                self._token_url,
                operation="token",
                authenticated=False,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._secret.get_secret_value(),
                },
            )
        except VendorRejected as exc:
            raise AuthFailed(f"token: client credentials refused: {exc.message}", status=exc.status) from None
        return token_answer(answer)

    async def _call(self, method: str, path: str, *, operation: str, **kwargs: Any) -> Answer:
        return await self.http.call(method, path, operation=operation, describe=describe, **kwargs)

    # ---- submit ------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> SubmitAnswered:
        job_type = job_type_of(spec.job)
        body = {
            "data": {
                "type": "subscription_job",
                "attributes": {"job_type": job_type, "external_ref": spec.request_id},
            }
        }
        try:
            answer = await self._call("POST", JOBS, operation="submit", json_body=body)
        except VendorRejected as exc:
            refused = exc.answer if isinstance(exc.answer, Answer) else None
            if refused is None or not _busy(refused):
                raise
            # Either the store runs a job of this type already, or our external_ref is
            # taken (a job from an earlier submit whose answer we lost): adopt our own.
            # A lookup cut short reads as busy too: that may wait for a job of ours past
            # the listable pages, but never fails a request that is only queued.
            ours = (await self._find(spec.request_id)).job
            if ours is not None:
                raw = _status_of(ours)
                return SubmitAnswered(vendor_job_id=ours["id"], vendor_status=raw, status=map_status(STATUSES, raw))
            raise VendorBusy(
                f"submit: {job_type} refused for now (HTTP {refused.status}): {describe(refused)}",
                status=refused.status,
                retry_after=self.http.retry_after(refused),
            ) from None
        job = _resource(answer, "submit", outcome_unknown=True)
        raw = _status_of(job)
        return SubmitAnswered(vendor_job_id=job["id"], vendor_status=raw, status=map_status(STATUSES, raw))

    # ---- poll --------------------------------------------------------------------------

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        """The job type: poll reads only the job id and the request id, but the worker
        runs billing and payment runs one at a time and must know a running job's type."""
        return kept(job, ("job_type",))

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered:
        answer = await self._call("GET", f"{JOBS}/{segment(vendor_job_id, 'job id')}", operation="poll")
        job = _resource(answer, "poll")
        raw = _status_of(job)
        status = map_status(STATUSES, raw)
        if status is Status.SUCCEEDED:
            return PollAnswered(vendor_status=raw, status=status, file=await self._store(spec, job, answer))
        if status is Status.FAILED:
            return PollAnswered(
                vendor_status=raw,
                status=status,
                error=ErrorInfo("vendor_failed", excerpt(self._failure(job)), False),
            )
        return PollAnswered(vendor_status=raw, status=status)

    @staticmethod
    def _failure(job: dict[str, Any]) -> str:
        attributes, meta = job.get("attributes") or {}, job.get("meta") or {}
        kind = attributes.get("job_type") or "job"
        reason = attributes.get("error") or (meta.get("error") if isinstance(meta, dict) else None)
        return f"Elastic Path reports the {kind} failed" + (f": {reason}" if reason else "")

    async def _store(self, spec: JobSpec, job: dict[str, Any], answer: Answer) -> FileInfo:
        """Write the job's report and timestamps as one JSON artifact. The bytes depend on
        the vendor's answer only, so a retried write yields the same digest."""
        meta = job.get("meta")
        report = meta.get("report") if isinstance(meta, dict) else None
        if not isinstance(report, dict):
            # Success without its report is not a result yet: retried within the error budget.
            raise MalformedAnswer(f"poll: success without meta.report: {excerpt(answer.body)}")
        attributes = job["attributes"]
        artifact = {
            "vendor": self.vendor,
            "request_id": spec.request_id,
            "job_id": job["id"],
            "job_type": attributes.get("job_type"),
            "external_ref": attributes.get("external_ref"),
            "status": _status_of(job),
            "report": report,
            "timestamps": meta.get("timestamps") if isinstance(meta, dict) else None,
        }
        data = (json.dumps(artifact, indent=2, sort_keys=True) + "\n").encode()
        stored = await self.results.put(
            artifact_key("elasticpath", spec.request_id, ".json"), data, content_type="application/json"
        )
        return FileInfo(url=stored.url, format="json", size_bytes=stored.size_bytes, sha256=stored.sha256)

    # ---- reconcile ---------------------------------------------------------------------

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        lookup = await self._find(spec.request_id)
        if lookup.job is None:
            return ReconcileAnswered(known=lookup.complete)
        raw = _status_of(lookup.job)
        return ReconcileAnswered(
            known=True, vendor_job_id=lookup.job["id"], vendor_status=raw, status=map_status(STATUSES, raw)
        )

    async def _find(self, external_ref: str) -> Lookup:
        """The job carrying ``external_ref``: by filter when the value is filter-safe,
        else (or when the filter is refused or evidently not applied) by paging."""
        if FILTER_SAFE.fullmatch(external_ref):
            try:
                answer = await self._call(
                    "GET", JOBS, operation="reconcile", params={"filter": f"eq(external_ref,{external_ref})"}
                )
                page = self._page(answer)
                found = self._match(page, external_ref)
                # A job under another ref means the filter was not applied: its absence says nothing.
                if found is not None or all(_ref_of(job) == external_ref for job in page):
                    return Lookup(found, complete=True)
            except VendorRejected as exc:
                if exc.status != 400:  # a refused filter falls back to paging
                    raise
        return await self._page_through(external_ref)

    async def _page_through(self, external_ref: str) -> Lookup:
        offset = 0
        while offset <= MAX_OFFSET:
            answer = await self._call(
                "GET",
                JOBS,
                operation="reconcile",
                params={"page[limit]": str(PAGE_LIMIT), "page[offset]": str(offset)},
            )
            page = self._page(answer)
            found = self._match(page, external_ref)
            if found is not None or len(page) < PAGE_LIMIT:
                return Lookup(found, complete=True)
            offset += PAGE_LIMIT
        # Every page the offset limit allows was full: the job may be on the next one.
        return Lookup(None, complete=False)

    @staticmethod
    def _page(answer: Answer) -> list[dict[str, Any]]:
        data = answer.json_object().get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            # Dropping the odd item would shorten the page and end the paging early.
            raise MalformedAnswer(f"reconcile: list answer without a data array of objects: {excerpt(answer.body)}")
        return data

    @staticmethod
    def _match(jobs: list[dict[str, Any]], external_ref: str) -> dict[str, Any] | None:
        """Our job among ``jobs`` (the filter is not trusted: the ref is compared here).
        Should there be several, the oldest is the one the first submit created."""
        ours = [
            job
            for job in jobs
            if isinstance(job.get("attributes"), dict)
            and job["attributes"].get("external_ref") == external_ref
            and isinstance(job.get("id"), str)
            and isinstance(job["attributes"].get("status"), str)
        ]
        if not ours:
            return None
        oldest = min(ours, key=lambda job: str(job["attributes"].get("created_at") or ""))
        job_id_of(oldest["id"], operation="reconcile", body=json.dumps(oldest).encode())
        return oldest
