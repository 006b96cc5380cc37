"""OpenGate (Amplía) IoT jobs (seed 002, vendors.md section 2): submit (large entity
lists in chunks), poll, collect the per-entity results into one JSON Lines artifact,
cancel, and reconcile a lost submit by searching for the job.

The protocol as spoken here, and the research behind reconcile (what the search API
allows, its sources, and what is assumed), are in docs/vendors/opengate.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from worker.config import ConnectionConfig
from worker.engine.model import (
    CancelAnswered,
    ErrorInfo,
    FileInfo,
    PollAnswered,
    ReconcileAnswered,
    Status,
    SubmitAnswered,
)
from worker.errors import (
    AuthFailed,
    ConfigError,
    InvalidRequest,
    MalformedAnswer,
    ResultStoreError,
    ResultTooLarge,
    VendorError,
    VendorRejected,
)
from worker.redaction import excerpt
from worker.result_store import ResultStore, artifact_key
from worker.vendors.base import JobSpec, VendorAdapter, job_id_of, map_status, segment
from worker.vendors.http import Answer, BearerToken, StaticHeader, VendorHttp

API = "/north/v80"
JOBS = f"{API}/operation/jobs"
LOGIN = f"{API}/provision/users/login"
SEARCH_JOBS = f"{API}/search/jobs"
HISTORY = f"{API}/search/entities/operations/history"

STATUSES: dict[str, Status] = {
    "initiating": Status.QUEUED,  # tag jobs, while the platform builds the job
    "idle": Status.QUEUED,  # created inactive
    "scheduled": Status.QUEUED,
    "in_progress": Status.RUNNING,
    "paused": Status.RUNNING,
    "cancelling": Status.RUNNING,
    "cancelling_by_user": Status.RUNNING,  # spelling seen by real clients
    "finished": Status.SUCCEEDED,  # or FAILED: decided from the counters / operations
    "cancelled": Status.CANCELLED,
}
RESOURCE_TYPES = frozenset(
    {"entity.device", "entity.asset", "entity.commsModule", "entity.subscription", "entity.subscriber"}
)
NOTES_PREFIX = "export-worker:"
MAX_CALLBACK_CHARS = 2_048
SUCCESSFUL = "SUCCESSFUL"
# The longest request id ingest accepts; validate() sizes bodies with it (the real id
# is only known at submit).
_LONGEST_ID = "x" * 256


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection knobs, from ``ConnectionConfig.options``."""

    max_entities: int = 100
    max_body_bytes: int = 300 * 1024
    operations_page_size: int = 1000
    search_page_size: int = 1000
    search_max_pages: int = 20
    # Operations held in memory to build one artifact: a vendor that never ends its
    # pages (or a job with more entities than max_entities allowed) fails the job instead.
    collect_max_operations: int = 200_000
    jwt_ttl_s: int = 3600

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Limits:
        known = set(cls.__slots__)
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"opengate: unknown options {sorted(unknown)} (known: {sorted(known)})")
        values: dict[str, int] = {}
        for name, value in options.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"opengate: option {name} must be a positive integer, got {value!r}")
            values[name] = value
        return cls(**values)


def user_notes(request_id: str) -> str:
    """What ties a job to our request: written on submit, matched on reconcile."""
    return f"{NOTES_PREFIX}{request_id}"


def body_size(body: Any) -> int:
    """Bytes on the wire: ``VendorHttp`` serialises ``json_body`` with plain ``json.dumps``."""
    return len(json.dumps(body).encode())


# ---- building the calls of a submit ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Every call a submit makes, in order, with the bodies already sized."""

    create: dict[str, Any]
    params: dict[str, str]
    appends: tuple[dict[str, Any], ...] = ()
    chunked: bool = False

    @property
    def activate(self) -> dict[str, Any]:
        return {"job": {"request": {"active": True}}}


def _target_kind(target: Mapping[str, Any]) -> str:
    kind = str(target.get("type") or "")
    if kind in ("OpenGateEntities", "OpenGateTag", "OpenGateFilter"):
        return kind
    for field, name in (("entities", "OpenGateEntities"), ("tag", "OpenGateTag"), ("filter_json", "OpenGateFilter")):
        if field in target:
            return name
    raise InvalidRequest("invalid_request", "the OpenGate target is none of entities, tag or filter")


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise InvalidRequest("invalid_request", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest("invalid_request", f"{what} must be a JSON object")
    return value


def _optional_ms(job: Mapping[str, Any], name: str) -> int | None:
    value = job.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest("invalid_request", f"{name} must be a non-negative integer")
    return value


def _callback(value: object) -> str:
    """The URL OpenGate calls when the job ends: http(s) with a host, no credentials in it
    (it is stored with the job, shown in OpenGate's UI and sent in our requests), no
    whitespace or control characters, at most MAX_CALLBACK_CHARS. The host is not
    restricted: OpenGate, not the worker, calls it."""
    if not isinstance(value, str) or not value or len(value) > MAX_CALLBACK_CHARS:
        raise InvalidRequest("invalid_request", f"callback must be a URL of 1-{MAX_CALLBACK_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidRequest("invalid_request", "callback must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise InvalidRequest("invalid_request", "callback is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("invalid_request", "callback must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("invalid_request", "callback must not carry credentials (user:password@)")
    return value


def _request_fields(job: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    operation = job.get("operation")
    if not isinstance(operation, str) or not operation.strip():
        raise InvalidRequest("invalid_request", "an OpenGate job needs an operation name")
    request: dict[str, Any] = {
        "name": operation,
        "parameters": _json_object(job.get("parameters_json") or "{}", "parameters_json"),
        "active": True,
        "notify": bool(job.get("notify", False)),
    }
    callback = job.get("callback")
    if callback is not None:
        request["callback"] = _callback(callback)
    request["userNotes"] = user_notes(request_id)
    stop = _optional_ms(job, "schedule_stop_delayed_ms")
    if stop is not None:
        request["schedule"] = {"stop": {"delayed": stop}}
    operation_parameters = {
        key: value
        for key, value in (
            ("timeout", _optional_ms(job, "operation_timeout_ms")),
            ("retries", _optional_ms(job, "operation_retries")),
            ("retriesDelay", _optional_ms(job, "operation_retries_delay_ms")),
        )
        if value is not None
    }
    if operation_parameters:
        request["operationParameters"] = operation_parameters
    return request


def _too_big(what: str, size: int, limits: Limits) -> InvalidRequest:
    return InvalidRequest(
        "oversize", f"{what} would be {size} bytes of JSON; OpenGate accepts at most {limits.max_body_bytes}"
    )


def _chunks(entities: list[str], first_base: int, put_base: int, limits: Limits) -> list[list[str]]:
    """Split entities so each body stays within the entity count and the byte limit.

    ``first_base``/``put_base``: bytes of the create / append body with an empty list."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = first_base
    for entity in entities:
        add = len(json.dumps(entity)) + (2 if current else 0)  # ", " between items
        if current and (len(current) >= limits.max_entities or size + add > limits.max_body_bytes):
            chunks.append(current)
            current, size, add = [], put_base, len(json.dumps(entity))
        if size + add > limits.max_body_bytes:
            raise _too_big(f"a body carrying entity {entity[:40]!r}", size + add, limits)
        current.append(entity)
        size += add
    chunks.append(current)
    return chunks


def build_plan(job: Mapping[str, Any], request_id: str, limits: Limits) -> Plan:
    """The calls that create ``job``; raises InvalidRequest for what OpenGate would refuse."""
    request = _request_fields(job, request_id)
    raw_target = job.get("target")
    if not isinstance(raw_target, Mapping):
        raise InvalidRequest("invalid_request", "an OpenGate job needs a target")
    kind = _target_kind(raw_target)
    params: dict[str, str] = {}
    if kind == "OpenGateEntities":
        raw = raw_target.get("entities")
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest("invalid_request", "the entity target is empty")
        if not all(isinstance(e, str) and e.strip() for e in raw):
            raise InvalidRequest("invalid_request", "entity ids must be non-empty strings")
        entities = list(dict.fromkeys(raw))  # a repeated id is one operation, not two
        first_base = body_size(
            {"job": {"request": {**request, "active": False, "target": {"append": {"entities": []}}}}}
        )
        put_base = body_size({"job": {"request": {"target": {"append": {"entities": []}}}}})
        chunks = _chunks(entities, first_base, put_base, limits)
        chunked = len(chunks) > 1
        request["active"] = not chunked
        request["target"] = {"append": {"entities": chunks[0]}}
        appends = tuple({"job": {"request": {"target": {"append": {"entities": c}}}}} for c in chunks[1:])
        create = {"job": {"request": request}}
        for body in (create, *appends):
            if body_size(body) > limits.max_body_bytes:  # _chunks guarantees this; keep the promise checked
                raise _too_big("a body", body_size(body), limits)
        return Plan(create, params, appends, chunked)
    if kind == "OpenGateTag":
        tag = raw_target.get("tag")
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidRequest("invalid_request", "the tag target is empty")
        request["target"] = {"append": {"tags": [tag]}}
    else:
        spec = _json_object(raw_target.get("filter_json"), "filter_json")
        if not spec:
            raise InvalidRequest("invalid_request", "the filter target is empty")
        # Accept both the bare filter and one already wrapped as {"filter": {...}}.
        request["target"] = spec if set(spec) == {"filter"} else {"filter": spec}
        resource_type = raw_target.get("resource_type")
        if resource_type is not None:
            if resource_type not in RESOURCE_TYPES:
                raise InvalidRequest(
                    "invalid_request", f"resource_type {resource_type!r} is not one of {sorted(RESOURCE_TYPES)}"
                )
            params["resourceType"] = resource_type
    create = {"job": {"request": request}}
    size = body_size(create)
    if size > limits.max_body_bytes:
        raise _too_big("the job body", size, limits)
    return Plan(create, params)


def validate(job: dict[str, Any], now_ms: int, conn: ConnectionConfig) -> None:
    """Refuse before any call what OpenGate would refuse: no operation, a malformed
    target or parameters, an unknown resource type, a body over the size limit."""
    build_plan(job, _LONGEST_ID, Limits.from_options(conn.options))


# ---- reading answers -------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def job_of(answer: Answer) -> dict[str, Any]:
    """The job document of a GET answer: ``{"job": {...}}`` or the job itself."""
    data = answer.json_object()
    job = data.get("job")
    return job if isinstance(job, dict) else data


def summary_of(job: Mapping[str, Any], body: bytes | str) -> tuple[dict[str, Any], str]:
    report = job.get("report")
    summary = report.get("summary") if isinstance(report, dict) else None
    raw = summary.get("status") if isinstance(summary, dict) else None
    if not isinstance(summary, dict) or not isinstance(raw, str) or not raw.strip():
        raise MalformedAnswer(f"job answer without report.summary.status: {excerpt(body)}")
    return summary, raw.strip()


@dataclass(frozen=True, slots=True)
class Counters:
    total: int | None
    successful: int | None
    errors: int | None

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> Counters:
        def count(*names: str) -> int | None:
            for name in names:
                value = summary.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    return value
            return None

        return cls(count("total"), count("successful", "success"), count("error", "errors", "failed"))

    @property
    def none_succeeded(self) -> bool:
        """Every operation ended without success, as far as the counters tell."""
        if not self.total:
            return False
        return self.successful == 0 or (self.errors is not None and self.errors >= self.total)


def _page_items(answer: Answer, key: str) -> list[dict[str, Any]]:
    """One page of a listing or search; ``204``/empty means no (more) items."""
    if answer.status == 204 or not answer.body.strip():
        return []
    data = answer.json()
    items = data.get(key) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MalformedAnswer(f"expected a list of {key}: {excerpt(answer.body)}")
    return items


def jwt_lifetime_s(token: str, default_s: float, *, now: float | None = None) -> float:
    """Seconds until the JWT's ``exp`` claim (read, not verified), else ``default_s``."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return default_s
    return max(30.0, exp - (now if now is not None else time.time()))


def _created(exc: VendorError, job_id: str) -> VendorError:
    """The same error, but saying the job exists: the engine then reconciles."""
    return type(exc)(
        f"{exc.message} (job {job_id} was created inactive; a reconcile completes it)",
        retry_after=exc.retry_after,
        status=exc.status,
        outcome_unknown=True,
    )


class OpenGateAdapter(VendorAdapter):
    vendor: ClassVar[str] = "opengate"
    can_reconcile: ClassVar[bool] = True
    extras: ClassVar[tuple[str, ...]] = ("result_store",)
    # Every operation name this adapter reports to metrics: a fixed set of labels (page
    # and chunk numbers go to error messages as the call's ``step``, never to labels).
    operations: ClassVar[frozenset[str]] = frozenset(
        {
            "login",
            "submit",
            "append",
            "activate",
            "discard",
            "poll",
            "collect",
            "history",
            "reconcile",
            "reconcile get",
            "cancel",
        }
    )

    def __init__(self, conn: ConnectionConfig, http: VendorHttp, *, result_store: ResultStore | None = None) -> None:
        self.conn = conn
        self.http = http
        self.limits = Limits.from_options(conn.options)
        self.result_store = result_store
        self.token: BearerToken | None = None
        if conn.api_key is not None:
            http.auth = StaticHeader("X-ApiKey", conn.api_key.resolve())
        elif conn.username and conn.password is not None:
            self._username = conn.username
            self._password = conn.password.resolve()
            self.token = BearerToken(self._login)
            http.auth = self.token
        else:
            raise ConfigError(f"connection {http.connection}: opengate needs api_key, or username and password")

    async def _login(self, http: VendorHttp, _refresh: str | None) -> tuple[str, float, str | None]:
        body = {"email": self._username, "password": self._password.get_secret_value()}
        try:
            answer = await http.call("POST", LOGIN, operation="login", authenticated=False, json_body=body)
        except VendorRejected as exc:
            if exc.status in (401, 403):
                # The credentials, not the job, are wrong: retriable once they are fixed.
                raise AuthFailed(f"login refused (HTTP {exc.status})", status=exc.status) from None
            raise
        data = answer.json_object()
        user = data.get("user")
        token = user.get("jwt") if isinstance(user, dict) else None
        if not isinstance(token, str) or not token:
            # No excerpt: a login answer is full of credentials.
            raise MalformedAnswer(f"login answer without user.jwt (keys: {sorted(data)[:10]})")
        return token, jwt_lifetime_s(token, float(self.limits.jwt_ttl_s)), None

    def _plan(self, spec: JobSpec) -> Plan:
        try:
            return build_plan(spec.job, spec.request_id, self.limits)
        except InvalidRequest as exc:
            raise VendorRejected(f"submit refused before sending: {exc.message}") from None

    # ---- submit ------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> SubmitAnswered:
        plan = self._plan(spec)
        answer = await self.http.call(
            "POST", JOBS, operation="submit", json_body=plan.create, params=plan.params or None
        )
        job_id = self._created_id(answer)
        if plan.chunked:
            await self._complete(job_id, plan)
        return SubmitAnswered(vendor_job_id=job_id, vendor_status=None, status=Status.QUEUED)

    def _created_id(self, answer: Answer) -> str:
        location = _header(answer.headers, "Location")
        if location:
            tail = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
            if tail and tail != "jobs":
                return job_id_of(unquote(tail), operation="submit", body=location.encode(), outcome_unknown=True)
        if answer.body.strip():
            try:
                data = answer.json()
            except MalformedAnswer as exc:
                raise MalformedAnswer(exc.message, status=answer.status, outcome_unknown=True) from None
            if isinstance(data, dict):
                inner = data.get("job")
                job_id = data.get("id") or (inner.get("id") if isinstance(inner, dict) else None)
                if isinstance(job_id, str) and job_id:
                    return job_id_of(job_id, operation="submit", body=answer.body, outcome_unknown=True)
        # A 2xx to the create means a job exists: say the outcome is unknown so it is found.
        raise MalformedAnswer(
            f"submit answer (HTTP {answer.status}) without a Location header or job id: {excerpt(answer.body)}",
            status=answer.status,
            outcome_unknown=True,
        )

    async def _complete(self, job_id: str, plan: Plan) -> None:
        """Append the remaining chunks to an inactive job, then activate it."""
        path = f"{JOBS}/{segment(job_id, 'job id')}"
        try:
            for number, body in enumerate(plan.appends, start=1):
                await self.http.call(
                    "PUT", path, operation="append", step=f"{number}/{len(plan.appends)}", json_body=body
                )
            await self.http.call("PUT", path, operation="activate", json_body=plan.activate)
        except VendorError as exc:
            if exc.retriable:
                raise _created(exc, job_id) from None
            # Refused for good: remove the inactive job rather than leave it behind (if
            # that fails too, an inactive job never runs: leaving it is harmless).
            with contextlib.suppress(VendorError):
                await self.http.call("DELETE", path, operation="discard")
            raise

    # ---- poll --------------------------------------------------------------------------

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        """Nothing: poll, collect and cancel read the job id and the request id, never
        the job body (its operation name is read by reconcile only, before acceptance)."""
        return {}

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered:
        answer = await self.http.call("GET", f"{JOBS}/{segment(vendor_job_id, 'job id')}", operation="poll")
        job = job_of(answer)
        summary, raw = summary_of(job, answer.body)
        status = map_status(STATUSES, raw)
        if status is not Status.SUCCEEDED:
            return PollAnswered(vendor_status=raw, status=status)
        counters = Counters.of(summary)
        if counters.none_succeeded:
            return PollAnswered(
                vendor_status=raw,
                status=Status.FAILED,
                error=ErrorInfo("vendor_failed", f"all {counters.total} operations of the job ended in error", False),
            )
        operations = await self.collect(vendor_job_id, counters.total)
        if not operations:
            return PollAnswered(
                vendor_status=raw,
                status=Status.FAILED,
                error=ErrorInfo("no_operations", "the job FINISHED without any operation (empty target)", False),
            )
        if counters.successful is None and not any(_successful(op) for op in operations):
            return PollAnswered(
                vendor_status=raw,
                status=Status.FAILED,
                error=ErrorInfo("vendor_failed", f"all {len(operations)} operations of the job ended in error", False),
            )
        return PollAnswered(vendor_status=raw, status=Status.SUCCEEDED, file=await self._store(spec, operations))

    async def collect(self, job_id: str, expected: int | None) -> list[dict[str, Any]]:
        """Every operation of a finished job, from its listing, else from the history."""
        path = f"{JOBS}/{segment(job_id, 'job id')}/operations"
        operations = await self._pages("GET", path, "operations", expected, operation="collect")
        if expected is not None and len(operations) < expected:
            # Observed live: the listing of a closed job can be empty; the history is not.
            body = {"filter": {"and": [{"eq": {"jobId": job_id}}]}}
            operations = await self._pages("POST", HISTORY, "operations", expected, operation="history", body=body)
        if expected is not None and len(operations) < expected:
            raise MalformedAnswer(
                f"the job summary counts {expected} operations, but only {len(operations)} could be read"
            )
        return operations

    async def _pages(
        self,
        method: str,
        path: str,
        key: str,
        expected: int | None,
        *,
        operation: str,
        body: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        size = self.limits.operations_page_size
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            if body is None:
                answer = await self.http.call(
                    method,
                    path,
                    operation=operation,
                    step=f"page {page}",
                    params={"start": str(page), "size": str(size)},
                )
            else:
                paged = {**body, "limit": {"size": size, "start": page}}
                answer = await self.http.call(method, path, operation=operation, step=f"page {page}", json_body=paged)
            found = _page_items(answer, key)
            items.extend(found)
            if len(items) > self.limits.collect_max_operations:
                raise ResultTooLarge(
                    f"{operation}: more than {self.limits.collect_max_operations} operations "
                    "(connection option collect_max_operations)"
                )
            if len(found) < size or (expected is not None and len(items) >= expected):
                return items
            page += 1

    async def _store(self, spec: JobSpec, operations: list[dict[str, Any]]) -> FileInfo:
        if self.result_store is None:
            raise ResultStoreError("opengate collects results, but no result store is configured")
        # Stable serialisation: a retried collection writes the same bytes (same sha256).
        lines = [json.dumps(op, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for op in operations]
        data = ("\n".join(lines) + "\n").encode()
        stored = await self.result_store.put(
            artifact_key("opengate", spec.request_id, ".jsonl"), data, content_type="application/x-ndjson"
        )
        return FileInfo(
            url=stored.url, format="jsonl", expires_at_ms=None, size_bytes=stored.size_bytes, sha256=stored.sha256
        )

    # ---- reconcile ---------------------------------------------------------------------

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        notes = user_notes(spec.request_id)
        operation = str(spec.job.get("operation") or "")
        size = self.limits.search_page_size
        matches: list[dict[str, Any]] = []
        # search/jobs filters on jobStatus, operationName, jobId and taskId only (the og
        # CLI; no public source shows userNotes as a filter field): filter by operation
        # name and match our notes in the answers here. limit.start is 1-based.
        for page in range(1, self.limits.search_max_pages + 1):
            body = {"filter": {"and": [{"eq": {"operationName": operation}}]}, "limit": {"size": size, "start": page}}
            answer = await self.http.call(
                "POST", SEARCH_JOBS, operation="reconcile", step=f"page {page}", json_body=body
            )
            jobs = [_unwrap(j) for j in _page_items(answer, "jobs")]
            matches.extend(j for j in jobs if _notes_of(j) == notes)
            if len(jobs) < size:
                break
        else:
            if not matches:
                # Not every page was read: "absent" would be a guess.
                return ReconcileAnswered(known=False)
        if not matches:
            # Assumed, not verified against a live tenant: a just-created job is already
            # visible to the search. An indexing lag would make a lost job look absent,
            # and the engine would submit again.
            return ReconcileAnswered(known=True)
        job_id = job_id_of(_pick(matches).get("id"), operation="reconcile", body=json.dumps(matches[0]).encode())
        # The search result may lag; the job itself is authoritative.
        answer = await self.http.call("GET", f"{JOBS}/{segment(job_id, 'job id')}", operation="reconcile get")
        _, raw = summary_of(job_of(answer), answer.body)
        plan = self._plan(spec)
        if plan.chunked and raw.upper() == "IDLE":
            # Created inactive, answer lost or an append failed: finish what submit began.
            # Appending again is safe: OpenGate reports already-attached entities as
            # ``duplicated`` inside a successful answer.
            await self._complete(job_id, plan)
            return ReconcileAnswered(known=True, vendor_job_id=job_id, vendor_status=None, status=Status.QUEUED)
        return ReconcileAnswered(known=True, vendor_job_id=job_id, vendor_status=raw, status=map_status(STATUSES, raw))

    # ---- cancel ------------------------------------------------------------------------

    async def cancel(self, spec: JobSpec, vendor_job_id: str) -> CancelAnswered:
        answer = await self.http.call("DELETE", f"{JOBS}/{segment(vendor_job_id, 'job id')}", operation="cancel")
        raw = "CANCELLING"
        if answer.body.strip():
            data = answer.json()
            job = data.get("job") if isinstance(data, dict) else None
            job = job if isinstance(job, dict) else data
            report = job.get("report") if isinstance(job, dict) else None
            summary = report.get("summary") if isinstance(report, dict) else None
            status = summary.get("status") if isinstance(summary, dict) else None
            if isinstance(status, str) and status.strip():
                raw = status.strip()
        mapped = map_status(STATUSES, raw)
        return CancelAnswered(
            vendor_status=raw, status=Status.CANCELLED if mapped is Status.CANCELLED else Status.RUNNING
        )


def _unwrap(item: dict[str, Any]) -> dict[str, Any]:
    """A search item is the job document, possibly wrapped as ``{"job": {...}}``."""
    inner = item.get("job")
    return inner if isinstance(inner, dict) and len(item) == 1 else item


def _notes_of(job: Mapping[str, Any]) -> str | None:
    # Assumed, not verified against a live tenant: search answers carry
    # ``request.userNotes`` (the job document as GET returns it).
    request = job.get("request")
    notes = request.get("userNotes") if isinstance(request, dict) else None
    return notes if isinstance(notes, str) else None


def _status_of(job: Mapping[str, Any]) -> str:
    report = job.get("report")
    summary = report.get("summary") if isinstance(report, dict) else None
    status = summary.get("status") if isinstance(summary, dict) else None
    return status.upper() if isinstance(status, str) else ""


def _pick(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several jobs carry our notes only after a resubmit: prefer one not cancelled,
    then the latest listed."""
    alive = [j for j in jobs if _status_of(j) not in ("CANCELLED", "CANCELLING", "CANCELLING_BY_USER")]
    return (alive or jobs)[-1]


def _successful(operation: Mapping[str, Any]) -> bool:
    result = operation.get("result")
    return isinstance(result, str) and result.upper() == SUCCESSFUL
