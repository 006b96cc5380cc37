"""What every simulator shares: tokens, a request log, jobs that progress with time,
fault injection and the ``/_sim`` control routes.

Control routes (not part of any vendor API):
  GET  /_sim/jobs          every job created (id, match key, status, created_at)
  GET  /_sim/requests      the HTTP requests received (for contract tests)
  POST /_sim/faults        change the FaultPlan (JSON object of fields), hostile-vendor
                           faults included (see ``faults.FaultPlan``)
  POST /_sim/expire-tokens invalidate every token issued so far
  POST /_sim/answer-next   serve the next API call with a raw answer (JSON {"status",
                           "body", "content_type"}): empty bodies, HTML, unexpected JSON

Every job remembers the call that created it: when it arrived, when its answer was handed
to the connection, and ``answer_lost`` when that answer never reached the client (the
connection was dropped, or the client had gone before the answer: a held answer, a
client timeout). The chaos run reads these to tell why a vendor job was created twice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from worker.simulators.faults import ANSWER_GARBLED, FaultPlan, Faults


@dataclass
class SimJob:
    job_id: str
    match_key: str  # what ties the job to a client request (correlation id, external_ref ...)
    body: Any
    created: float
    fails: bool
    durations: tuple[float, ...]
    cancelled_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    created_wall: float = field(default_factory=time.time)
    received: float | None = None  # monotonic: when the API call that created the job arrived
    answered: float | None = None  # monotonic: when that call's answer left (or was dropped)
    answer_lost: str | None = None  # "dropped" / "client_gone" / "garbled": the client never read the answer
    client: str | None = None  # the User-Agent of the call that created the job

    def stage(self, now: float) -> int:
        """Index of the current stage: 0 .. len(durations) (the last means finished)."""
        elapsed = now - self.created
        for i, _ in enumerate(self.durations):
            elapsed -= self.durations[i]
            if elapsed < 0:
                return i
        return len(self.durations)


@dataclass
class Timing:
    """How long each in-progress stage of a simulated job lasts, in seconds."""

    stages: tuple[float, ...] = (1.0, 1.0, 1.0)
    token_ttl_s: float = 3600.0
    link_ttl_s: float = 30 * 86400.0


class Simulator:
    """Base for one vendor's simulator; subclasses add the vendor's routes."""

    vendor = "vendor"
    api_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        timing: Timing | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record: bool = True,
    ):
        self.timing = timing or Timing()
        self.record = record  # keep a log of every request (tests); off for long load runs
        self.faults = Faults(faults, seed=seed)
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.jobs: dict[str, SimJob] = {}
        self.requests: list[dict[str, Any]] = []
        self.busy_refused = 0  # submits refused because the account was busy (Elastic Path: 409)
        # Raw answers for the next API calls, served after the request is recorded and
        # the faults are applied, before the vendor logic (and its auth) runs.
        self.canned: deque[tuple[int, bytes, str, dict[str, str]]] = deque()
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    # ---- building blocks for subclasses ----------------------------------------------
    def issue_token(self) -> tuple[str, int]:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.timing.token_ttl_s
        return token, int(self.timing.token_ttl_s)

    def token_valid(self, token: str | None) -> bool:
        expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def bearer(self, request: web.Request, scheme: str = "bearer") -> str | None:
        header = request.headers.get("Authorization", "")
        prefix = f"{scheme} "
        if header.lower().startswith(prefix):
            return header[len(prefix) :].strip()
        return None

    def new_job(self, match_key: str, body: Any, **extra: Any) -> SimJob:
        job = SimJob(
            job_id=self.make_job_id(),
            match_key=match_key,
            body=body,
            created=time.monotonic(),
            fails=self.faults.job_fails(),
            durations=tuple(d * self.faults.plan.slow_factor for d in self.timing.stages)
            if self.faults.job_slow()
            else self.timing.stages,
            extra=dict(extra),
        )
        self.jobs[job.job_id] = job
        call = _CALL.get()
        if call is not None:
            job.received = call.received
            call.jobs.append(job)
        return job

    def make_job_id(self) -> str:
        import uuid

        return str(uuid.uuid4())

    def is_api(self, request: web.Request) -> bool:
        return self.is_api_path(request.path)

    def is_api_path(self, path: str) -> bool:
        return path.startswith(self.api_prefixes)

    def is_authenticated_call(self, request: web.Request) -> bool:
        return self.is_api(request)

    def call_kind(self, request: web.Request) -> str | None:
        """What a request is, for ``FaultPlan.hostile_on``: "token", "submit", "poll",
        "download", "reconcile", "cancel", "other"; None for the ``/_sim`` control routes.
        Subclasses name their routes; this default knows only API calls from the rest."""
        if request.path.startswith("/_sim"):
            return None
        return "other"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def answer_next(
        self, status: int, body: bytes | str = b"", content_type: str = "application/json", **headers: str
    ) -> None:
        """Serve the next API call with exactly this answer, whatever it asked."""
        raw = body.encode() if isinstance(body, str) else body
        self.canned.append((status, raw, content_type, dict(headers)))

    @web.middleware
    async def _serve_canned(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.canned and self.is_api(request):
            status, body, content_type, headers = self.canned.popleft()
            return web.Response(status=status, body=body, headers={"Content-Type": content_type, **headers})
        return await handler(request)

    async def _sim_answer_next(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.answer_next(
            int(spec.get("status", 200)), str(spec.get("body", "")), spec.get("content_type", "application/json")
        )
        return web.json_response({"queued": len(self.canned)})

    # ---- did the answer reach the client? --------------------------------------------
    @web.middleware
    async def _track_answers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Outermost: stamps the jobs an API call created with its arrival, its answer,
        and whether the client was still there to read that answer."""
        if not self.is_api(request):
            return await handler(request)
        call = _Call(time.monotonic(), request.headers.get("User-Agent"))
        token = _CALL.set(call)
        try:
            response = await handler(request)
        except asyncio.CancelledError:  # drop_connection (lost_submit), or aiohttp gave up
            call.close("dropped")
            raise
        finally:
            _CALL.reset(token)
        transport = request.transport
        if request.get(ANSWER_GARBLED):
            call.close("garbled")
        else:
            call.close("client_gone" if transport is None or transport.is_closing() else None)
        return response

    # ---- app -------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.record and not request.path.startswith("/_sim"):
            body = await request.read()
            self.requests.append(
                {
                    "at": time.monotonic(),
                    "method": request.method,
                    "path": request.path,
                    "query": dict(request.query),
                    "headers": dict(request.headers),
                    "body": body.decode("utf-8", "replace"),
                }
            )
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                self._track_answers,
                self._record,
                self.faults.middleware(
                    is_api=self.is_api, authenticated=self.is_authenticated_call, kind=self.call_kind
                ),
                self._serve_canned,
            ]
        )
        app.router.add_get("/_sim/jobs", self._sim_jobs)
        app.router.add_get("/_sim/requests", self._sim_requests)
        app.router.add_post("/_sim/faults", self._sim_faults)
        app.router.add_post("/_sim/expire-tokens", self._sim_expire)
        app.router.add_get("/_sim/rate-limits", self._sim_rate_limits)
        app.router.add_post("/_sim/answer-next", self._sim_answer_next)
        self.routes(app)
        return app

    async def _sim_jobs(self, _request: web.Request) -> web.Response:
        now = time.monotonic()
        return web.json_response(
            [
                {
                    "job_id": j.job_id,
                    "match_key": j.match_key,
                    "stage": j.stage(now),
                    "fails": j.fails,
                    "cancelled": j.cancelled_at is not None,
                    "created_wall": j.created_wall,
                    "done_wall": j.created_wall + sum(j.durations),
                    "received": j.received,
                    "answered": j.answered,
                    "answer_lost": j.answer_lost,
                    "client": j.client,
                }
                for j in self.jobs.values()
            ]
        )

    async def _sim_requests(self, _request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _sim_rate_limits(self, _request: web.Request) -> web.Response:
        """When 429s were answered and when API calls arrived (monotonic seconds)."""
        arrivals = [r["at"] for r in self.requests if self.is_api_path(r["path"])]
        quota = {"calls": self.faults.quota.calls, "refused": self.faults.quota.refused}
        return web.json_response(
            {
                "rate_limited_at": self.faults.rate_limited_at,
                "arrivals": arrivals,
                "account_quota": quota,
                "busy_refused": self.busy_refused,
            }
        )

    async def _sim_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.plan.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"faults": self.faults.plan.as_dict(), "injected": self.faults.injected})

    async def _sim_expire(self, _request: web.Request) -> web.Response:
        self.tokens.clear()
        return web.json_response({"expired": True})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.faults.open()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        bound = sockets[0].getsockname()[1] if sockets else port
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        self.faults.close()  # held (hanging, streaming) answers give up now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class _Call:
    """One API call in progress, and the jobs it created."""

    received: float
    client: str | None = None
    jobs: list[SimJob] = field(default_factory=list)

    def close(self, lost: str | None) -> None:
        now = time.monotonic()
        for job in self.jobs:
            job.client = self.client
            job.answered = now
            job.answer_lost = job.answer_lost or lost


_CALL: ContextVar[_Call | None] = ContextVar("simulator_call", default=None)
