"""Elastic Path subscription jobs simulator: client-credentials tokens, create, get and
list jobs (pending -> started -> success | failed), with the report in ``meta.report``.

Quirks reproduced:
  * one billing-run and one payment-run per store at a time: creating a second while the
    first is pending or started answers 409 Write Conflict (tax runs are not limited);
  * ``external_ref`` is unique: creating a job with a taken ref answers 409 as well;
  * JSON:API errors in the mixed shapes of the published examples: a 404 answered with a
    500 error object, ``status`` as a string or a number, ``detail`` missing, and the
    filter error without any ``status``;
  * ``GET /v2/subscriptions/jobs?filter=eq(external_ref,...)`` (one value) and ``in``
    (several) find jobs by their ref. Filter values hold only the characters of the
    Filtering guide's table: ``A-Z a-z 0-9 $ - _ * .`` and the space (an unencoded ``+``
    is a space), ``+`` only URL encoded (``%2B``); anything else (``~``, ``/``, ``:``, a
    quote, an encoded comma inside an ``eq``) is "Could not parse the supplied filter".
    The guide has no quoting. The list pages with ``page[limit]`` (at most 100) and
    ``page[offset]`` (at most 10,000).

Control route besides the shared ones: ``POST /_sim/answer-next`` (JSON ``{"status",
"body", "content_type"}``) serves the next API call with that raw answer, e.g. an empty
body or an unexpected JSON object.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import time
import uuid
from typing import Any

from aiohttp import web

from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan, drop_connection

API = "/v2/subscriptions/"
JOB_TYPES = ("billing-run", "tax-run", "payment-run")
ONE_PER_STORE = ("billing-run", "payment-run")
FILTER = re.compile(r"^(eq|in)\(external_ref,([^()]*)\)$")
# Checked on the decoded value: an unencoded '+' has become a space by then, so a '+'
# left in it arrived as %2B, which the guide allows.
FILTER_VALUE = re.compile(r"^[A-Za-z0-9$\-_*. +]*$")
JSONAPI = "application/vnd.api+json"


def _iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ElasticPathSimulator(Simulator):
    vendor = "elasticpath"
    api_prefixes = (API,)

    def __init__(
        self,
        *,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        timing: Timing | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(timing=timing, faults=faults, seed=seed, record=record)
        self.client_id = client_id
        self.client_secret = client_secret
        self._shapes = itertools.count()  # cycles the error shapes of the published examples

    def call_kind(self, request: web.Request) -> str | None:
        path = request.path.rstrip("/")
        if path == "/oauth/access_token":
            return "token"
        if path == API + "jobs":
            return "submit" if request.method == "POST" else "reconcile"
        if path.startswith(API + "jobs/"):
            return "poll"
        return super().call_kind(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/oauth/access_token", self.token)
        app.router.add_post(API + "jobs", self.create)
        app.router.add_get(API + "jobs", self.list_jobs)
        app.router.add_get(API + "jobs/{job_id}", self.get_job)

    # ---- errors ------------------------------------------------------------------------
    def _error(self, status: int, title: str, detail: str | None = None, **meta: Any) -> web.Response:
        """A JSON:API error; every third one comes in a mixed-up shape of the seed."""
        shape = next(self._shapes) % 3
        item: dict[str, Any] = {"title": title, "status": str(status)}
        if shape == 1:
            item["status"] = status  # a number, as in some published examples
        if detail is not None and not (shape == 2 and status >= 500):
            item["detail"] = detail
        if meta:
            item["meta"] = meta
        if shape == 2 and status == 404:
            # The seed's 404 example carries a 500 error object.
            item = {
                "status": "500",
                "title": "Internal server error",
                "detail": "An internal error has occurred.",
                "meta": {"missing_ids": meta.get("missing_ids", [])},
            }
        return web.json_response({"errors": [item]}, status=status, content_type=JSONAPI)

    # ---- auth --------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self._error(400, "Bad Request", "grant_type must be client_credentials")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._error(401, "Unauthorized", "Invalid client credentials")
        token, ttl = self.issue_token()
        return web.json_response(
            {
                "access_token": token,
                "expires": int(time.time()) + ttl,
                "expires_in": ttl,
                "identifier": "client_credentials",
                "token_type": "Bearer",
            }
        )

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.token_valid(self.bearer(request)):
            return None
        return self._error(401, "Unable to validate access token")

    # ---- jobs --------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.StreamResponse:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "Validation Error", "request body is not valid JSON")
        data = body.get("data") if isinstance(body, dict) else None
        attributes = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("type") != "subscription_job" or not isinstance(attributes, dict):
            return self._error(400, "Validation Error", 'data.type: "type" must be subscription_job')
        job_type = attributes.get("job_type")
        if job_type not in JOB_TYPES:
            return self._error(
                400, "Validation Error", f"data.attributes.job_type: must be one of {', '.join(JOB_TYPES)}"
            )
        ref = attributes.get("external_ref")
        if ref is not None and (not isinstance(ref, str) or len(ref) > 2048):
            return self._error(400, "Validation Error", "data.attributes.external_ref: at most 2048 characters")
        now = time.monotonic()
        if ref and any(j.match_key == ref for j in self.jobs.values()):
            return self._error(409, "Write Conflict", "external_ref must be unique")
        if job_type in ONE_PER_STORE and any(
            j.extra["job_type"] == job_type and not self._finished(j, now) for j in self.jobs.values()
        ):
            self.busy_refused += 1
            return self._error(409, "Write Conflict")
        job = self.new_job(ref or "", body, job_type=job_type, created_wall=time.time())
        if self.faults.submit_lost():
            return await drop_connection(request)
        return web.json_response({"data": self._resource(job, now)}, status=201, content_type=JSONAPI)

    async def get_job(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        job_id = request.match_info["job_id"]
        try:
            uuid.UUID(job_id)
        except ValueError:
            return self._error(400, "Validation Error", "job_uuid: must be a UUID")
        job = self.jobs.get(job_id)
        if job is None:
            return self._error(404, "Not Found", "No job found", missing_ids=[job_id])
        return web.json_response({"data": self._resource(job, time.monotonic())}, content_type=JSONAPI)

    async def list_jobs(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        jobs = sorted(self.jobs.values(), key=lambda j: j.created)
        raw_filter = request.query.get("filter")
        if raw_filter is not None:
            found = FILTER.match(raw_filter)
            values = found.group(2).split(",") if found else []
            if (
                found is None
                or not all(FILTER_VALUE.match(v) for v in values)
                or (found.group(1) == "eq" and len(values) != 1)
            ):
                # The documented filter error has a title and a detail, but no status.
                return web.json_response(
                    {"errors": [{"title": "Bad Request", "detail": "Could not parse the supplied filter"}]},
                    status=400,
                    content_type=JSONAPI,
                )
            jobs = [j for j in jobs if j.match_key in values]
        try:
            limit = int(request.query.get("page[limit]", "25"))
            offset = int(request.query.get("page[offset]", "0"))
        except ValueError:
            return self._error(400, "Validation Error", "page[limit] and page[offset] must be integers")
        if not (0 <= limit <= 100) or not (0 <= offset <= 10_000):
            return self._error(400, "Validation Error", "page[limit] <= 100 and page[offset] <= 10000")
        now = time.monotonic()
        page = jobs[offset : offset + limit]
        return web.json_response(
            {
                "data": [self._resource(j, now) for j in page],
                "links": {"current": str(request.rel_url)},
                "meta": {
                    "page": {"limit": limit, "offset": offset, "total": len(jobs)},
                    "results": {"total": len(jobs)},
                },
            },
            content_type=JSONAPI,
        )

    # ---- job rendering -----------------------------------------------------------------
    @staticmethod
    def _finished(job: SimJob, now: float) -> bool:
        return job.stage(now) >= len(job.durations)

    def status_of(self, job: SimJob, now: float) -> str:
        if self._finished(job, now):
            return "failed" if job.fails else "success"
        return "pending" if job.stage(now) == 0 else "started"

    def _resource(self, job: SimJob, now: float) -> dict[str, Any]:
        status = self.status_of(job, now)
        created = job.extra["created_wall"]
        timestamps = {"created_at": _iso(created), "updated_at": _iso(created + (now - job.created))}
        if status != "pending":
            timestamps["started_at"] = _iso(created + job.durations[0])
        if status in ("success", "failed"):
            timestamps["finished_at"] = _iso(created + sum(job.durations))
            timestamps["updated_at"] = timestamps["finished_at"]
        attributes: dict[str, Any] = {
            "external_ref": job.match_key or None,
            "job_type": job.extra["job_type"],
            "status": status,
            "created_at": timestamps["created_at"],
            "updated_at": timestamps["updated_at"],
        }
        meta: dict[str, Any] = {"owner": "store", "timestamps": timestamps}
        if status == "success":
            meta["report"] = self.report(job)
        elif status == "failed":
            attributes["error"] = "payment gateway unavailable"
            meta["report"] = {"invoice_failures": 1}
        return {
            "id": job.job_id,
            "type": "subscription_job",
            "attributes": attributes,
            "meta": meta,
            "links": {"self": f"{self.base_url}{API}jobs/{job.job_id}"},
        }

    def report(self, job: SimJob) -> dict[str, Any]:
        """The report of a successful job; numbers derived from its id (stable per job)."""
        n = int(hashlib.sha256(job.job_id.encode()).hexdigest()[:6], 16) % 90 + 10
        totals = {"USD": {"amount": n * 100, "includes_tax": False}, "GBP": {"amount": n * 90, "includes_tax": True}}
        kind = job.extra["job_type"]
        if kind == "billing-run":
            return {
                "invoices_ready_for_payment": n,
                "invoices_tax_required": n // 4,
                "invoice_failures": 0,
                "total_ready_for_payment": totals,
                "total_tax_required": totals,
            }
        if kind == "tax-run":
            return {"invoices_updated": n, "invoice_failures": 0}
        return {"invoices_paid": n, "payment_failures": 0, "total_collected": totals}


def demo_connection(base_url: str) -> Any:
    """A connection to this simulator with its demo credentials (inline: demo only)."""
    from worker.config import ConnectionConfig, SecretRef

    return ConnectionConfig(
        vendor="elasticpath",
        base_url=base_url,
        client_id="demo-client",
        client_secret=SecretRef(value="demo-secret"),
    )


def sample_job() -> tuple[str, dict[str, Any]]:
    # A tax run: the store allows any number at a time, so several demo requests run at
    # once (billing and payment runs would queue behind each other).
    return ("export.v1.ElasticPathJob", {"job_type": "TAX_RUN"})
