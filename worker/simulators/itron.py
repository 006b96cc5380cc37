"""Itron DPSS simulator: identity server token endpoint, batch-request submit and poll
(New -> Started -> Running -> Success | Failed), and a zip behind an expiring blob link.

Quirks reproduced: the link field is ``downloadUrl`` on some answers and ``DownloadUri``
on others (the seed uses both), the link expires at its ``se=`` parameter, the
``Itron-CorrelationId`` and ``DataSubscriberId`` headers are required. Subscription and
job ids are UUIDs (the seed's parameter table): any other value names no subscription or
job (404).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import time
import uuid
import zipfile
from typing import Any

from aiohttp import web

from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan, drop_connection

FILETYPES = {"parquet": "Parquet", "orc": "Orc", "json": "Json", "csv": "Csv"}
STAGES = ("New", "Started", "Running")
API = "/dpss/api/v1/subscriptions/"


def _not_uuid(request: web.Request, *names: str) -> web.Response | None:
    for name in names:
        try:
            uuid.UUID(request.match_info[name])
        except ValueError:
            return web.json_response({"message": f"{name} not found"}, status=404)
    return None


class ItronSimulator(Simulator):
    vendor = "itron"
    api_prefixes = (API,)

    def __init__(
        self,
        *,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        subscriber_id: str = "demo-subscriber",
        timing: Timing | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(timing=timing, faults=faults, seed=seed, record=record)
        self.client_id = client_id
        self.client_secret = client_secret
        self.subscriber_id = subscriber_id
        self._signing_key = uuid.uuid4().bytes

    def call_kind(self, request: web.Request) -> str | None:
        path = request.path
        if path == "/connect/token":
            return "token"
        if path.startswith("/raw/"):
            return "download"
        if self.is_api_path(path):
            return "submit" if request.method == "POST" else "poll"
        return super().call_kind(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/connect/token", self.token)
        app.router.add_post(API + "{subscription}/batch-request", self.submit)
        app.router.add_get(API + "{subscription}/batch-request/{job_id}", self.poll)
        app.router.add_get("/raw/{folder}/{name}", self.download)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=400)
        if form.get("scope") != "DPSSSubscriberApi":
            return web.json_response({"error": "invalid_scope"}, status=400)
        token, ttl = self.issue_token()
        return web.json_response({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})

    def _check(self, request: web.Request) -> web.Response | None:
        if not self.token_valid(self.bearer(request)):
            return web.json_response({"message": "Unauthorized"}, status=401)
        try:
            uuid.UUID(request.headers.get("Itron-CorrelationId", ""))
        except ValueError:
            return web.json_response({"message": "Itron-CorrelationId header must be a UUID"}, status=400)
        if request.headers.get("DataSubscriberId") != self.subscriber_id:
            return web.json_response({"message": "unknown DataSubscriberId"}, status=403)
        return None

    async def submit(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request) or _not_uuid(request, "subscription")
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"message": "body must be a JSON object"}, status=400)
        filetype = FILETYPES.get(str(body.get("filetype", "")).lower())
        tokens = body.get("tokens")
        if filetype is None or not isinstance(tokens, dict) or not isinstance(body.get("isOhsRequest"), bool):
            return web.json_response({"message": "filetype, tokens and isOhsRequest are required"}, status=400)
        job = self.new_job(
            request.headers["Itron-CorrelationId"],
            body,
            subscription=request.match_info["subscription"],
            filetype=filetype,
        )
        if self.faults.submit_lost():
            return await drop_connection(request)
        return web.json_response(self._answer(job, time.monotonic()))

    async def poll(self, request: web.Request) -> web.Response:
        refused = self._check(request) or _not_uuid(request, "subscription", "job_id")
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None or job.extra["subscription"] != request.match_info["subscription"]:
            return web.json_response({"message": "job not found"}, status=404)
        return web.json_response(self._answer(job, time.monotonic()))

    def _answer(self, job: SimJob, now: float) -> dict[str, Any]:
        stage = job.stage(now)
        status = STAGES[stage] if stage < len(STAGES) else ("Failed" if job.fails else "Success")
        link = self._link(job, now) if status == "Success" else None
        # The seed's example says downloadUrl and its field table DownloadUri: serve both.
        link_field = "downloadUrl" if int(job.job_id[-1], 16) % 2 == 0 else "DownloadUri"
        return {
            "jobId": job.job_id,
            "status": status,
            link_field: link,
            "fileFormat": job.extra["filetype"].lower(),
            "tokens": job.body.get("tokens", {}),
            "isOhsRequest": job.body.get("isOhsRequest", False),
        }

    def _link(self, job: SimJob, now: float) -> str:
        finished_wall = time.time() - (now - job.created - sum(job.durations))
        start = dt.datetime.fromtimestamp(finished_wall, dt.UTC).replace(microsecond=0)
        end = start + dt.timedelta(seconds=self.timing.link_ttl_s)
        name = job.job_id.upper()
        se = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._sign(name, se)
        st = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.base_url}/raw/{name}/{name}.zip?sv=2018-03-28&sr=b&sig={sig}&st={st}&se={se}&sp=r"

    def _sign(self, name: str, se: str) -> str:
        return hmac.new(self._signing_key, f"{name}|{se}".encode(), hashlib.sha256).hexdigest()[:32]

    async def download(self, request: web.Request) -> web.Response:
        name = request.match_info["folder"]
        se = request.query.get("se", "")
        if not hmac.compare_digest(request.query.get("sig", ""), self._sign(name, se)):
            return web.Response(status=403, text="AuthenticationFailed: signature mismatch")
        try:
            expires = dt.datetime.fromisoformat(se.replace("Z", "+00:00"))
        except ValueError:
            return web.Response(status=403, text="AuthenticationFailed: bad se")
        if expires <= dt.datetime.now(dt.UTC):
            return web.Response(status=403, text="AuthenticationFailed: Signed expiry time has passed")
        job = self.jobs.get(name.lower())
        if job is None:
            return web.Response(status=404, text="BlobNotFound")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            rows = ["ServicePointId,Status,EventDate", "9000053409,Accepted,2024-06-13"]
            archive.writestr(f"{name}.{job.extra['filetype'].lower()}", "\n".join(rows) + "\n")
        return web.Response(body=buf.getvalue(), content_type="application/zip")


def demo_connection(base_url: str) -> Any:
    """A connection to this simulator with its demo credentials (inline: demo only)."""
    from worker.config import ConnectionConfig, SecretRef

    return ConnectionConfig(
        vendor="itron",
        base_url=base_url,
        client_id="demo-client",
        client_secret=SecretRef(value="demo-secret"),
        subscription_id="7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10",
        subscriber_id="demo-subscriber",
    )


def sample_job() -> tuple[str, dict[str, Any]]:
    today = dt.datetime.now(dt.UTC).date()
    return (
        "export.v1.ItronBatchRequest",
        {
            "filetype": "Csv",
            "tokens": {
                "StartEventDate": (today - dt.timedelta(days=30)).isoformat(),
                "EndEventDate": today.isoformat(),
                "ServicePoint": "9000053409,9002036306,9000910527",
            },
            "is_ohs_request": False,
            "subscription_id": None,
        },
    )
