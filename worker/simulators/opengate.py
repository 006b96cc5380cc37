"""OpenGate (Amplía) north API simulator: API-key and JWT auth, jobs over entity lists,
tags and filters, per-entity operations, job search and cancellation.

Lifecycle: ``INITIATING`` (tag jobs only, first stage) -> ``IDLE`` while inactive ->
``SCHEDULED`` -> ``IN_PROGRESS`` -> ``FINISHED``; ``PAUSED`` when deactivated after it
started; ``DELETE`` gives ``CANCELLING`` for one stage, then ``CANCELLED`` (operations
already executed stay executed). A failed job (``faults.fail_jobs``) finishes with every
operation in ``ERROR``; an entity id starting with ``fail-`` fails on its own.

Quirks reproduced:
  * the job id comes only in the ``Location`` header of the ``201``;
  * more than ``max_entities`` (100) entities or ``max_body_bytes`` (300 KB) of JSON in a
    body is a ``400`` with an ``errors`` body; a job may be changed (targets, notes, ...)
    only while inactive and not started, and a filter target never;
  * appending an entity already attached reports it under ``report.target.duplicated``;
  * ``search/jobs`` filters on ``jobId``, ``operationName``, ``jobStatus`` (``job.status``)
    and ``taskId`` only: any other field is ``400`` "Field in filter unknown";
  * an empty search or listing page is ``204 No Content``; ``GET`` of an unknown job is
    ``200 {}``;
  * ``listing_gone = True``: a FINISHED job's ``/operations`` answers ``204`` while
    ``search/entities/operations/history`` still has them (seen on real tenants).

Test hooks beyond the shared faults: ``fail_puts`` (PUT number, counting from 1 ->
HTTP status to answer it with) and ``answer_next()`` (canned answers for the next API
calls).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan, drop_connection

API = "/north/v80"
JOBS = f"{API}/operation/jobs"
RESOURCE_TYPES = ("entity.device", "entity.asset", "entity.commsModule", "entity.subscription", "entity.subscriber")
# filter name -> how to read it from a job (search/jobs accepts only these)
JOB_FILTER_FIELDS = ("jobid", "operationname", "jobstatus", "job.status", "taskid")
HISTORY_FILTER_FIELDS = (
    "jobid",
    "entityid",
    "operationid",
    "resourcetype",
    "operationname",
    "operation.name",
    "operationstatus",
    "operationresult",
    "operation.result",
)
UPDATABLE = frozenset({"active", "notify", "callback", "userNotes", "schedule", "target"})
MAX_PAGE = 1000


def _errors(http_status: int, code: str, message: str, **context: Any) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if context:
        error["context"] = [{"name": k, "value": v} for k, v in context.items()]
    return web.json_response({"errors": [error]}, status=http_status)


class _BadRequest(Exception):
    def __init__(self, message: str, code: str = "0x010001", **context: Any) -> None:
        super().__init__(message)
        self.response = _errors(400, code, message, **context)


@dataclass
class OGJob:
    """The OpenGate side of a simulated job (kept in ``SimJob.extra["og"]``)."""

    request: dict[str, Any]
    kind: str  # entities | tags | filter
    entities: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    filter: dict[str, Any] = field(default_factory=dict)
    resource_type: str | None = None
    active: bool = False
    activated_at: float | None = None  # when it last went from IDLE to active
    paused_at: float | None = None
    paused_total: float = 0.0
    duplicated: list[str] = field(default_factory=list)
    ran_at_cancel: float | None = None  # run time when DELETE arrived


class OpenGateSimulator(Simulator):
    vendor = "opengate"
    api_prefixes = (f"{API}/operation/", f"{API}/search/")

    def __init__(
        self,
        *,
        api_key: str = "demo-api-key",
        username: str = "demo@example.com",
        password: str = "demo-password",
        max_entities: int = 100,
        max_body_bytes: int = 300 * 1024,
        tag_size: int = 3,
        timing: Timing | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(timing=timing, faults=faults, seed=seed, record=record)
        self.api_key = api_key
        self.username = username
        self.password = password
        self.max_entities = max_entities
        self.max_body_bytes = max_body_bytes
        self.tag_size = tag_size
        self.listing_gone = False
        self.fail_puts: dict[int, int] = {}
        self.puts_seen = 0
        self.logins = 0

    # ---- test hooks --------------------------------------------------------------------
    def og(self, job_id: str) -> OGJob:
        og: OGJob = self.jobs[job_id].extra["og"]
        return og

    # ---- routes ------------------------------------------------------------------------
    def call_kind(self, request: web.Request) -> str | None:
        path, method = request.path.rstrip("/"), request.method
        if path == f"{API}/provision/users/login":
            return "token"
        if path == JOBS:
            return "submit"
        if path.startswith(JOBS + "/"):
            if path.endswith("/operations"):
                return "download"
            return {"GET": "poll", "PUT": "submit", "DELETE": "cancel"}.get(method, "other")
        if path == f"{API}/search/entities/operations/history":
            return "download"
        if path == f"{API}/search/jobs":
            return "reconcile"
        return super().call_kind(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{API}/provision/users/login", self.login)
        app.router.add_post(JOBS, self.create)
        app.router.add_get(JOBS + "/{job_id}", self.get_job)
        app.router.add_put(JOBS + "/{job_id}", self.update)
        app.router.add_delete(JOBS + "/{job_id}", self.cancel)
        app.router.add_get(JOBS + "/{job_id}/operations", self.operations)
        app.router.add_post(f"{API}/search/jobs", self.search_jobs)
        app.router.add_post(f"{API}/search/entities/operations/history", self.history)

    def _gate(self, request: web.Request) -> web.Response | None:
        """A 401 unless the call carries a valid key or JWT."""
        key = request.headers.get("X-ApiKey")
        if key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return None
        if self.token_valid(self.bearer(request)):
            return None
        return _errors(401, "0x000001", "Unauthorized")

    async def login(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _errors(400, "0x000002", "body must be JSON")
        if not isinstance(body, dict) or set(body) - {"email", "password", "2FaCode"}:
            return _errors(400, "0x000002", "login takes email and password")
        email, password = str(body.get("email", "")), str(body.get("password", ""))
        if not (
            hmac.compare_digest(email.encode(), self.username.encode())
            and hmac.compare_digest(password.encode(), self.password.encode())
        ):
            return _errors(401, "0x000003", "Invalid user or password")
        self.logins += 1
        token = self._issue_jwt(email)
        return web.json_response(
            {"user": {"email": email, "name": "Demo", "domain": "demo", "profile": "admin", "jwt": token}}
        )

    def _issue_jwt(self, subject: str) -> str:
        def part(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

        now = time.time()
        ttl = self.timing.token_ttl_s
        claims = {"sub": subject, "iat": int(now), "exp": int(now + ttl), "jti": secrets.token_hex(8)}
        token = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{secrets.token_urlsafe(32)}"
        self.tokens[token] = time.monotonic() + ttl
        return token

    # ---- bodies ------------------------------------------------------------------------
    async def _request_of(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if len(raw) > self.max_body_bytes:
            raise _BadRequest(
                f"JSON body of {len(raw)} bytes exceeds the limit of {self.max_body_bytes} bytes",
                "0x010098",
                size=len(raw),
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise _BadRequest("body must be JSON") from None
        job = body.get("job") if isinstance(body, dict) else None
        req = job.get("request") if isinstance(job, dict) else None
        if not isinstance(req, dict):
            raise _BadRequest("body must be {'job': {'request': {...}}}")
        return req

    def _entities(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(e, str) and e for e in value):
            raise _BadRequest("target entities must be a list of identifiers")
        if len(value) > self.max_entities:
            raise _BadRequest(
                f"{len(value)} entities in one request; the limit is {self.max_entities}", "0x010099", size=len(value)
            )
        return value

    # ---- create ------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.StreamResponse:
        refused = self._gate(request)
        if refused is not None:
            return refused
        try:
            req = await self._request_of(request)
            og = self._new_og(req, request.query.get("resourceType"))
        except _BadRequest as bad:
            return bad.response
        job = self.new_job(str(req.get("userNotes") or ""), req, og=og)
        if og.active:
            og.activated_at = job.created
        if self.faults.submit_lost():
            return await drop_connection(request)
        return web.Response(status=201, headers={"Location": f"{JOBS}/{job.job_id}"})

    def _new_og(self, req: dict[str, Any], resource_type: str | None) -> OGJob:
        name = req.get("name")
        if not isinstance(name, str) or not name:
            raise _BadRequest("request.name (the operation) is required")
        if not isinstance(req.get("parameters", {}), dict):
            raise _BadRequest("request.parameters must be an object")
        active = req.get("active", True)
        if not isinstance(active, bool) or not isinstance(req.get("notify", False), bool):
            raise _BadRequest("active and notify must be booleans")
        target = req.get("target")
        if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in ("append", "filter"):
            raise _BadRequest("target must be exactly one of append or filter")
        stored = {k: v for k, v in req.items() if k != "target"}
        if "filter" in target:
            if not isinstance(target["filter"], dict) or not target["filter"]:
                raise _BadRequest("target.filter must be a filter object")
            if resource_type is not None and resource_type not in RESOURCE_TYPES:
                raise _BadRequest(f"resourceType {resource_type!r} is not supported", resourceType=resource_type)
            return OGJob(stored, "filter", filter=target["filter"], resource_type=resource_type, active=active)
        if resource_type is not None:
            raise _BadRequest("resourceType applies to filter targets only")
        append = target["append"]
        if not isinstance(append, dict) or len(append) != 1:
            raise _BadRequest("You can't mix target references with tag references")
        if "tags" in append:
            tags = append["tags"]
            if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
                raise _BadRequest("target tags must be a list of tag names")
            return OGJob(stored, "tags", tags=tags, active=active)
        og = OGJob(stored, "entities", active=active)
        self._append(og, self._entities(append.get("entities")))
        return og

    @staticmethod
    def _append(og: OGJob, entities: list[str]) -> None:
        for entity in entities:
            if entity in og.entities:
                og.duplicated.append(entity)
            else:
                og.entities.append(entity)

    # ---- lifecycle ---------------------------------------------------------------------
    def _ready_at(self, job: SimJob) -> float:
        og = self.og(job.job_id)
        return job.created + (self.timing.stages[0] if og.kind == "tags" else 0.0)

    def _run_time(self, job: SimJob, now: float) -> float | None:
        og = self.og(job.job_id)
        if og.activated_at is None:
            return None
        start = max(og.activated_at, self._ready_at(job))
        end = og.paused_at if og.paused_at is not None else now
        return max(0.0, end - start - og.paused_total)

    def status(self, job: SimJob, now: float) -> str:
        og = self.og(job.job_id)
        stages = self.timing.stages
        if job.cancelled_at is not None:
            return "CANCELLED" if now - job.cancelled_at >= stages[0] else "CANCELLING"
        if now < self._ready_at(job):
            return "INITIATING"
        run = self._run_time(job, now)
        if run is None:
            return "IDLE"
        if og.paused_at is not None:
            return "PAUSED"
        if run < stages[0]:
            return "SCHEDULED"
        return "IN_PROGRESS" if run < sum(stages) else "FINISHED"

    def targets(self, job: SimJob) -> list[str]:
        og = self.og(job.job_id)
        if og.kind == "entities":
            return list(og.entities)
        if og.kind == "tags":
            return [f"{tag}-device-{i}" for tag in og.tags for i in range(1, self.tag_size + 1)]
        return [f"filtered-device-{i}" for i in range(1, 3)]

    def _executed(self, job: SimJob, count: int) -> int:
        """How many operations a cancelled job ran before the DELETE (never rolled back)."""
        ran = self.og(job.job_id).ran_at_cancel
        first, total = self.timing.stages[0], sum(self.timing.stages)
        if ran is None or ran < first or total <= first:
            return 0
        return min(count, int(count * (ran - first) / (total - first)))

    def operations_of(self, job: SimJob, now: float) -> list[dict[str, Any]]:
        og = self.og(job.job_id)
        status = self.status(job, now)
        if status == "INITIATING":
            return []
        entities = self.targets(job)
        executed = len(entities) if status == "FINISHED" else 0
        if status in ("CANCELLING", "CANCELLED"):
            executed = self._executed(job, len(entities))
        ops = []
        for index, entity in enumerate(entities):
            result: str | None
            if index < executed:
                fails = job.fails or entity.startswith("fail-")
                op_status, result = "FINISHED", ("ERROR" if fails else "SUCCESSFUL")
            elif status in ("CANCELLING", "CANCELLED"):
                op_status, result = "CANCELLED", "CANCELLED"
            elif status == "IN_PROGRESS":
                op_status, result = "IN_PROGRESS", None
            else:
                op_status, result = "PENDING", None
            step: dict[str, Any] = {"name": job.body.get("name"), "result": result or "NOT_EXECUTED"}
            if result == "ERROR":
                step["description"] = "device did not answer the operation"
            ops.append(
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job.job_id}/{entity}")),
                    "jobId": job.job_id,
                    "entityId": entity,
                    "resourceType": og.resource_type or "entity.device",
                    "name": job.body.get("name"),
                    "status": op_status,
                    "result": result,
                    "steps": [step],
                }
            )
        return ops

    def summary(self, job: SimJob, now: float) -> dict[str, Any]:
        ops = self.operations_of(job, now)
        results = [op["result"] for op in ops]
        return {
            "status": self.status(job, now),
            "total": len(self.targets(job)),
            "successful": results.count("SUCCESSFUL"),
            "error": results.count("ERROR"),
            "cancelled": results.count("CANCELLED"),
            "inProgress": sum(op["status"] == "IN_PROGRESS" for op in ops),
            "pending": sum(op["status"] == "PENDING" for op in ops),
        }

    def document(self, job: SimJob, now: float) -> dict[str, Any]:
        og = self.og(job.job_id)
        request = {**og.request, "active": og.active}
        if og.kind == "entities":
            request["target"] = {"append": {"entities": list(og.entities)}}
        elif og.kind == "tags":
            request["target"] = {"append": {"tags": list(og.tags)}}
        else:
            request["target"] = {"filter": og.filter}
        return {
            "id": job.job_id,
            "request": request,
            "report": {
                "summary": self.summary(job, now),
                "target": {"duplicated": list(og.duplicated), "notProvisioned": [], "notAllowed": []},
            },
        }

    # ---- job routes --------------------------------------------------------------------
    async def get_job(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({})  # what real tenants answer for an unknown id
        return web.json_response({"job": self.document(job, time.monotonic())})

    async def update(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        self.puts_seen += 1
        failure = self.fail_puts.get(self.puts_seen)
        if failure is not None and failure >= 500:
            return web.Response(status=failure, text=f"<html><body>{failure} Service Unavailable</body></html>")
        if failure is not None:
            return _errors(failure, "0x010001", "update refused")
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _errors(404, "0x000404", "job not found")
        now = time.monotonic()
        og = self.og(job.job_id)
        try:
            req = await self._request_of(request)
            unknown = set(req) - UPDATABLE
            if unknown:
                raise _BadRequest(f"these fields cannot be updated: {sorted(unknown)}")
            status = self.status(job, now)
            changes = set(req) - {"active"}
            if changes:
                if og.active or status not in ("IDLE", "INITIATING"):
                    raise _BadRequest("a job can only be updated while inactive and not started", status=status)
                self._change(og, req)
            if "active" in req:
                self._activate(job, og, req["active"], status, now)
        except _BadRequest as bad:
            return bad.response
        return web.json_response({"job": self.document(job, now)})

    def _change(self, og: OGJob, req: dict[str, Any]) -> None:
        target = req.get("target")
        if target is not None:
            if og.kind == "filter":
                raise _BadRequest("the target of a filter job cannot be updated")
            if not isinstance(target, dict) or not set(target) <= {"append", "remove"} or not target:
                raise _BadRequest("target updates are append or remove")
            for action, value in target.items():
                if not isinstance(value, dict) or set(value) != {"entities"} or og.kind != "entities":
                    raise _BadRequest("only entity lists can be appended to or removed from")
                entities = self._entities(value["entities"])
                if action == "append":
                    self._append(og, entities)
                else:
                    og.entities = [e for e in og.entities if e not in set(entities)]
        for key in ("notify", "callback", "userNotes", "schedule"):
            if key in req:
                og.request[key] = req[key]

    def _activate(self, job: SimJob, og: OGJob, active: Any, status: str, now: float) -> None:
        if not isinstance(active, bool):
            raise _BadRequest("active must be a boolean")
        if status in ("FINISHED", "CANCELLING", "CANCELLED"):
            raise _BadRequest(f"a {status} job cannot be activated or paused", status=status)
        if active and not og.active:
            if og.paused_at is not None:  # resume
                og.paused_total += now - og.paused_at
                og.paused_at = None
            else:
                og.activated_at = now
        elif not active and og.active:
            if status == "IN_PROGRESS":  # pause
                og.paused_at = now
            else:  # back to IDLE
                og.activated_at = None
                og.paused_total = 0.0
        og.active = active

    async def cancel(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _errors(404, "0x000404", "job not found")
        now = time.monotonic()
        status = self.status(job, now)
        if status in ("FINISHED", "CANCELLED"):
            return _errors(400, "0x010050", f"a {status} job cannot be cancelled", status=status)
        if job.cancelled_at is None:
            og = self.og(job.job_id)
            og.ran_at_cancel = self._run_time(job, now)
            job.cancelled_at = now
        return web.Response(status=204)

    # ---- listings and search -----------------------------------------------------------
    @staticmethod
    def _page(items: list[dict[str, Any]], start: Any, size: Any) -> list[dict[str, Any]]:
        try:
            first, count = int(start), int(size)
        except (TypeError, ValueError):
            raise _BadRequest("start and size must be integers") from None
        if first < 1 or not 1 <= count <= MAX_PAGE:
            raise _BadRequest(f"start must be >= 1 and size 1..{MAX_PAGE}", start=first, size=count)
        return items[(first - 1) * count : first * count]

    async def operations(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _errors(404, "0x000404", "job not found")
        now = time.monotonic()
        if self.listing_gone and self.status(job, now) == "FINISHED":
            return web.Response(status=204)
        try:
            page = self._page(
                self.operations_of(job, now), request.query.get("start", 1), request.query.get("size", 1000)
            )
        except _BadRequest as bad:
            return bad.response
        if not page:
            return web.Response(status=204)
        return web.json_response({"operations": page, "page": {"number": int(request.query.get("start", 1))}})

    async def _search_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise _BadRequest("body must be JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        return body

    async def search_jobs(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        now = time.monotonic()
        try:
            body = await self._search_body(request)
            expr = body.get("filter") or {}
            _matches(expr, {}, JOB_FILTER_FIELDS)  # refuses unknown fields even when there is no job
            docs = [self.document(job, now) for job in self.jobs.values()]
            matching = [d for d in docs if _matches(expr, _job_fields(d), JOB_FILTER_FIELDS)]
            limit = _limit(body)
            page = self._page(matching, limit.get("start", 1), limit.get("size", 1000))
        except _BadRequest as bad:
            return bad.response
        if not page:
            return web.Response(status=204)
        return web.json_response({"jobs": page, "page": {"number": int(limit.get("start", 1))}})

    async def history(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        now = time.monotonic()
        try:
            body = await self._search_body(request)
            expr = body.get("filter") or {}
            _matches(expr, {}, HISTORY_FILTER_FIELDS)
            ops = [op for job in self.jobs.values() for op in self.operations_of(job, now)]
            matching = [o for o in ops if _matches(expr, _op_fields(o), HISTORY_FILTER_FIELDS)]
            limit = _limit(body)
            page = self._page(matching, limit.get("start", 1), limit.get("size", 1000))
        except _BadRequest as bad:
            return bad.response
        if not page:
            return web.Response(status=204)
        return web.json_response({"operations": page, "page": {"number": int(limit.get("start", 1))}})


def _limit(body: dict[str, Any]) -> dict[str, Any]:
    limit = body.get("limit") or {}
    if not isinstance(limit, dict):
        raise _BadRequest("limit must be {'size': n, 'start': page}")
    return limit


def _job_fields(doc: dict[str, Any]) -> dict[str, Any]:
    status = doc["report"]["summary"]["status"]
    return {
        "jobid": doc["id"],
        "operationname": doc["request"].get("name"),
        "jobstatus": status,
        "job.status": status,
        "taskid": None,
    }


def _op_fields(op: dict[str, Any]) -> dict[str, Any]:
    return {
        "jobid": op["jobId"],
        "entityid": op["entityId"],
        "operationid": op["id"],
        "resourcetype": op["resourceType"],
        "operationname": op["name"],
        "operation.name": op["name"],
        "operationstatus": op["status"],
        "operationresult": op["result"],
        "operation.result": op["result"],
    }


def _matches(expr: Any, fields: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    """Evaluate an OpenGate filter: and/or lists of eq/neq/like/in expressions."""
    if not isinstance(expr, dict):
        raise _BadRequest("a filter must be an object")
    result = True
    for op, arg in expr.items():
        if op in ("and", "or"):
            if not isinstance(arg, list):
                raise _BadRequest(f"{op} takes a list of expressions")
            parts = [_matches(a, fields, allowed) for a in arg]
            result = result and (all(parts) if op == "and" else any(parts))
            continue
        if op not in ("eq", "neq", "like", "in") or not isinstance(arg, dict) or len(arg) != 1:
            raise _BadRequest(f"unsupported filter operator {op!r}")
        name, wanted = next(iter(arg.items()))
        if name.lower() not in allowed:
            raise _BadRequest("Field in filter unknown", "0x050014", field=name)
        value = fields.get(name.lower())
        if op == "eq":
            result = result and value == wanted
        elif op == "neq":
            result = result and value != wanted
        elif op == "like":
            result = result and value is not None and re.search(str(wanted), str(value)) is not None
        else:
            result = result and isinstance(wanted, list) and value in wanted
    return result


def demo_connection(base_url: str) -> Any:
    """A connection to this simulator with its demo API key (inline: demo only)."""
    from worker.config import ConnectionConfig

    return ConnectionConfig.model_validate(
        {"vendor": "opengate", "base_url": base_url, "api_key": {"value": "demo-api-key"}}
    )


def sample_job() -> tuple[str, dict[str, Any]]:
    return (
        "export.v1.OpenGateJob",
        {
            "operation": "REFRESH_INFO",
            "parameters_json": "{}",
            "target": ("export.v1.OpenGateEntities", {"entities": ["meter-0001", "meter-0002", "meter-0003"]}),
            "notify": False,
            "callback": None,
            "schedule_stop_delayed_ms": 600_000,
            "operation_timeout_ms": 85_000,
            "operation_retries": 0,
            "operation_retries_delay_ms": None,
        },
    )
