"""``export-worker console``: the operators' web pages (aiohttp, server-rendered).

Fleet, Jobs (search and lineage), Dead letters (replay with a dry run first) and
Pauses. Pages read the index (``worker.console.index``) and the fleet snapshot, never a
topic, so they answer in milliseconds whatever the number of jobs; actions go through
the same operator code as the CLI (``worker.ops``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web
from pydantic import SecretStr

from worker.config import ConnectionConfig, ConnectionsFile, Settings
from worker.console.auth import COOKIE, SESSION_S, ConsoleAuth, Session, clean_name, same_origin
from worker.console.fleet import FleetWatcher
from worker.console.follow import IndexFollower, IndexThread
from worker.console.index import PAGE, JobQuery
from worker.engine.model import Status
from worker.errors import ExportWorkerError
from worker.ops.dlq import MAX_SELECTED, replay_dead_letters
from worker.ops.errors import OperatorError
from worker.ops.kafkaio import connect
from worker.ops.lineage import Lineage, lineage_of
from worker.ops.pause import blocks_in, pauses_in, set_paused
from worker.ops.timeparse import format_ms, parse_position, parse_time
from worker.ops.wire import codec_for
from worker.redaction import redact_text
from worker.vendor_registry import VENDORS

log = structlog.get_logger("export_worker.console")

HERE = Path(__file__).parent
# How long an action waits to see its own control record come back through the index.
ECHO_WAIT_S = 5.0
# Form fields: the longest value kept (names, reasons, search terms).
MAX_FIELD = 200
# Form bodies larger than this are refused.
MAX_BODY = 64 * 1024
# How long one dry run or replay may take before the page gives up on it.
REPLAY_TIMEOUT_S = 120.0
# Replays remembered as done, so that a resubmitted form does not replay again.
DONE_PLANS = 1_000
# Host headers a console listening on loopback answers (DNS rebinding gets nothing).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """What ``export-worker console`` was started with."""

    host: str = "127.0.0.1"
    port: int = 8090
    token: SecretStr | None = None
    connections_file: Path | None = None
    worker_metrics: tuple[str, ...] = ()
    index_dir: Path | None = None


class Console:
    """The console's parts: index, follower, fleet watcher, templates, auth."""

    def __init__(self, settings: Settings, options: ConsoleOptions) -> None:
        self.settings = settings
        self.options = options
        self.auth = ConsoleAuth(options.token)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = format_ms
        self.index: IndexThread
        self.follower: IndexFollower
        self.fleet: FleetWatcher
        self._done_plans: OrderedDict[str, str] = OrderedDict()  # plan -> what it did
        self._replaying = asyncio.Lock()  # one dry run or replay at a time

    @property
    def access_note(self) -> str:
        """Who may act here, for the line that announces the console's URL."""
        if self.auth.enabled:
            return "sign in with EXPORT_WORKER_CONSOLE_TOKEN to act"
        return "read-only: set EXPORT_WORKER_CONSOLE_TOKEN to act"

    # ---- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Console]:
        """Index, follower and fleet watcher, until the block ends."""
        async with AsyncExitStack() as stack:
            if self.options.index_dir is None:
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="export-worker-console-")))
            else:
                directory = self.options.index_dir
            self.index = IndexThread(directory / "console-index.sqlite")
            stack.callback(self.index.close)
            cluster = await connect(self.settings)
            codec = await codec_for(self.settings)
            self.follower = IndexFollower(self.settings, cluster, codec, self.index)
            self.fleet = FleetWatcher(self.settings, cluster, list(self.options.worker_metrics))
            self.codec = codec
            stop = asyncio.Event()
            tasks = [asyncio.create_task(self.follower.run(stop)), asyncio.create_task(self.fleet.run(stop))]

            async def finish() -> None:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

            stack.push_async_callback(finish)
            yield self

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/", self.home),
                web.get("/fleet", self.fleet_page),
                web.get("/jobs", self.jobs_page),
                web.get("/jobs/{request_id:.+}", self.job_page),
                web.get("/dead-letters", self.dead_letters_page),
                web.post("/dead-letters/check", self.dead_letters_check),
                web.post("/dead-letters/replay", self.dead_letters_replay),
                web.get("/pauses", self.pauses_page),
                web.post("/pauses", self.pause_action),
                web.get("/login", self.login_page),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/progress", self.progress_note),
                web.get("/healthz", self.healthz),
                web.static("/static", HERE / "static"),
            ]
        )
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self.options.host in LOOPBACK_HOSTS and _hostname(request.host) not in LOOPBACK_HOSTS:
                raise web.HTTPMisdirectedRequest(text="this console answers only to localhost")
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and errors get the same headers
            self._secure(request, exc)
            raise
        self._secure(request, response)
        return response

    def _secure(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.path != "/healthz" and not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")

    # ---- rendering ---------------------------------------------------------------------------

    def _session(self, request: web.Request) -> Session | None:
        return self.auth.session(request.cookies.get(COOKIE))

    def render(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        session = self._session(request)
        progress = self.follower.progress
        base = {
            "page": template.split(".", maxsplit=1)[0],
            "auth_enabled": self.auth.enabled,
            "session": session,
            "csrf": self.auth.csrf(session) if session is not None else "",
            "progress": progress,
            "message": None,
            "error": None,
        }
        html = self.templates.get_template(template).render(**{**base, **context})
        return web.Response(text=html, content_type="text/html", status=status)

    def fragment(self, template: str, **context: Any) -> web.Response:
        html = self.templates.get_template(template).render(progress=self.follower.progress, **context)
        return web.Response(text=html, content_type="text/html")

    # ---- read-only pages -----------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/fleet")

    async def progress_note(self, request: web.Request) -> web.StreamResponse:
        """How far the index has read (the pages' banner, refreshed until it is gone)."""
        return self.fragment("progress.html")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        progress = self.follower.progress
        ok = progress.error is None
        return web.json_response({"ok": ok, "index": progress.as_json()}, status=200 if ok else 503)

    async def _fleet_context(self) -> dict[str, Any]:
        def read(index: Any) -> tuple[Any, ...]:
            return index.open_counts(), index.jobs_total(), index.dead_letter_counts(), index.control()

        open_counts, total, dead_letters, control = await self.index.call(read)
        statuses = [s.value for s in Status if any(st == s.value for _v, st in open_counts)]
        vendors = sorted({v for v, _s in open_counts})
        now_ms = int(time.time() * 1000)
        pauses, blocks = pauses_in(control), blocks_in(control, now_ms)
        return {
            "open_counts": open_counts,
            "open_total": sum(open_counts.values()),
            "vendors": vendors,
            "vendor_totals": {v: sum(n for (vendor, _s), n in open_counts.items() if vendor == v) for v in vendors},
            "statuses": statuses,
            "jobs_total": total,
            "dead_letter_counts": dead_letters,
            "pauses": pauses,
            "blocks": blocks,
            "snapshot": self.fleet.snapshot,
            "worker_urls": self.options.worker_metrics,
        }

    async def fleet_page(self, request: web.Request) -> web.StreamResponse:
        context = await self._fleet_context()
        if request.query.get("fragment"):
            return self.fragment("fleet_live.html", **context)
        return self.render(request, "fleet.html", **context)

    async def jobs_page(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        form = {name: _field(q.get(name)) for name in ("request_id", "tenant", "connection", "vendor", "status",
                                                        "since", "until", "before")}  # fmt: skip
        try:
            query = _job_query(form)
        except OperatorError as exc:
            return self.render(request, "jobs.html", status=400, form=form, rows=[], more=None, error=str(exc),
                               vendors=VENDORS, statuses=[s.value for s in Status])  # fmt: skip
        rows = await self.index.call(lambda index: index.search(query))
        more = None
        if len(rows) == query.limit:
            last = rows[-1]
            more = {**{k: v for k, v in form.items() if v and k != "before"},
                    "before": f"{last.updated_at_ms}:{last.request_id}"}  # fmt: skip
        return self.render(
            request, "jobs.html", form=form, rows=rows, more=more, vendors=VENDORS, statuses=[s.value for s in Status]
        )

    async def job_page(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        records = await self.index.call(lambda index: index.job(request_id))
        if records is None:
            return self.render(request, "job.html", status=404, request_id=request_id, lineage=None)
        lineage = await lineage_of(
            self.codec, Lineage(request_id), state=records.state, statuses=list(records.statuses),
            files=list(records.files),
        )  # fmt: skip
        data = lineage.as_json()
        if request.query.get("format") == "json":
            return web.json_response(data)
        if request.query.get("fragment"):
            return self.fragment("job_live.html", request_id=request_id, lineage=data)
        return self.render(request, "job.html", request_id=request_id, lineage=data)

    async def dead_letters_page(self, request: web.Request) -> web.StreamResponse:
        reason = _field(request.query.get("reason")) or None
        rows, counts = await self.index.call(lambda index: (index.dead_letters(reason), index.dead_letter_counts()))
        return self.render(request, "dead_letters.html", rows=rows, counts=counts, reason=reason,
                           max_selected=MAX_SELECTED)  # fmt: skip

    async def pauses_page(self, request: web.Request) -> web.StreamResponse:
        return await self._pauses(request)

    async def _pauses(self, request: web.Request, *, status: int = 200, **context: Any) -> web.Response:
        control = await self.index.call(lambda index: index.control())
        pauses, blocks = pauses_in(control), blocks_in(control, int(time.time() * 1000))
        return self.render(request, "pauses.html", status=status, pauses=pauses, blocks=blocks, vendors=VENDORS,
                           **context)  # fmt: skip

    # ---- signing in --------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self.render(request, "login.html", name="")

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request.headers.get("Origin"), request.host):
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        name = clean_name(str(form.get("name", "")))
        token = str(form.get("token", ""))[:1024]
        if not self.auth.enabled:
            return self.render(request, "login.html", status=403, name=name,
                               error="This console is read-only: EXPORT_WORKER_CONSOLE_TOKEN is not set.")  # fmt: skip
        if self.auth.contains_token(name):  # pasted into the wrong field: never kept, shown or logged
            log.warning("console sign-in refused: the token was typed as the name", remote=request.remote)
            return self.render(request, "login.html", status=403, name="",
                               error="That name holds the console token: type your own name.")  # fmt: skip
        if not name or not self.auth.check_token(token):
            log.warning("console sign-in refused", who=name or None, remote=request.remote)
            return self.render(request, "login.html", status=403, name=name, error="Name and token do not match.")
        log.info("console sign-in", who=name, remote=request.remote)
        response = web.HTTPSeeOther("/fleet")
        response.set_cookie(COOKIE, self.auth.sign_in(name, secrets.token_hex(8)), max_age=SESSION_S, httponly=True,
                            samesite="Strict", secure=request.secure, path="/")  # fmt: skip
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = await self._actor(request)
        log.info("console sign-out", who=session.who)
        response = web.HTTPSeeOther("/fleet")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _actor(self, request: web.Request) -> Session:
        """The signed-in operator of a POST that acts; 403 otherwise (read-only console,
        no session, a missing or wrong CSRF token, another site's Origin)."""
        if not self.auth.enabled:
            raise web.HTTPForbidden(text="read-only console: EXPORT_WORKER_CONSOLE_TOKEN is not set")
        if not same_origin(request.headers.get("Origin"), request.host):
            raise web.HTTPForbidden(text="cross-site request refused")
        session = self._session(request)
        if session is None:
            raise web.HTTPForbidden(text="sign in first (/login)")
        form = await request.post()
        if not self.auth.check_csrf(session, str(form.get("csrf", ""))):
            log.warning("console action refused: bad CSRF token", who=session.who, path=request.path)
            raise web.HTTPForbidden(text="the form is stale or forged: reload the page and try again")
        return session

    # ---- actions -------------------------------------------------------------------------

    async def pause_action(self, request: web.Request) -> web.StreamResponse:
        session = await self._actor(request)
        form = await request.post()
        target = _field(form.get("target"))
        vendor = form.get("kind") == "vendor"
        action = _field(form.get("action"))
        reason = _field(form.get("reason")) or None
        if action not in ("pause", "resume"):
            return await self._pauses(request, status=400, error="the form names no action: reload the page")
        if action == "pause" and reason is None:
            return await self._pauses(request, status=400, error="say why you pause it (the reason is shown to all)")
        paused = action == "pause"
        try:
            key = await set_paused(self.settings, target, vendor=vendor, paused=paused, reason=reason,
                                   by=f"{session.who} (console)")  # fmt: skip
        except ExportWorkerError as exc:
            _audit(session, action, target, reason, f"refused: {exc}")
            return await self._pauses(request, status=400, error=str(exc))
        _audit(session, action, key, reason, "done")
        await self._see_control(key, paused)
        what = "paused: no new submits; open jobs keep polling to the end" if paused else "resumed"
        return await self._pauses(request, message=f"{key} {what}")

    async def _see_control(self, key: str, paused: bool) -> None:
        """Wait (bounded) until the index has read the control record just written, so
        the page that follows shows it."""
        deadline = time.monotonic() + ECHO_WAIT_S
        while time.monotonic() < deadline:
            control = await self.index.call(lambda index: index.control())
            if bool(control.get(key, {}).get("paused")) == paused:
                return
            await asyncio.sleep(0.05)

    def _connections(self) -> dict[str, ConnectionConfig] | None:
        path = self.options.connections_file or self.settings.connections_file
        return None if path is None else ConnectionsFile.load(path).connections  # read fresh: the operator's fix

    async def dead_letters_check(self, request: web.Request) -> web.StreamResponse:
        """The dry run: what the workers would do with each selected dead letter, and a
        confirm form bound to exactly these (``plan``)."""
        session = await self._actor(request)
        form = await request.post()
        positions: list[tuple[int, int]] = []
        try:
            positions = _positions(form.getall("position", []))
            async with self._replaying, asyncio.timeout(REPLAY_TIMEOUT_S):
                report = await replay_dead_letters(
                    self.settings, dry_run=True, positions=positions, connections=self._connections()
                )
        except (ExportWorkerError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {REPLAY_TIMEOUT_S:.0f} s"
            _audit(session, "dead-letter dry run", _describe(positions), None, f"refused: {why}")
            return self.render(request, "replay.html", status=400, report=None, positions=[], error=why)
        _audit(session, "dead-letter dry run", _describe(positions), None, dict(report.outcomes))
        return self.render(request, "replay.html", report=report, positions=[f"{p}:{o}" for p, o in positions],
                           plan=self.auth.plan(session, positions),
                           predictions=[(where, o.text) for where, o in report.predictions])  # fmt: skip

    async def dead_letters_replay(self, request: web.Request) -> web.StreamResponse:
        """The confirm: replays exactly what the dry run showed, once."""
        session = await self._actor(request)
        form = await request.post()
        positions: list[tuple[int, int]] = []
        plan = str(form.get("plan", ""))
        try:
            positions = _positions(form.getall("position", []))
            if not self.auth.check_plan(session, positions, plan):
                raise OperatorError("this replay is not the one its dry run showed: select the dead letters again")
            if plan in self._done_plans:
                raise OperatorError(f"this replay already ran ({self._done_plans[plan]}); nothing was written again")
            async with self._replaying, asyncio.timeout(REPLAY_TIMEOUT_S):
                if plan in self._done_plans:  # the same form, submitted twice at once
                    raise OperatorError(f"this replay already ran ({self._done_plans[plan]})")
                report = await replay_dead_letters(self.settings, positions=positions)
                self._remember(plan, f"replayed {report.replayed} of {report.matched}")
        except (ExportWorkerError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {REPLAY_TIMEOUT_S:.0f} s: some may have been written, see Jobs"
            _audit(session, "dead-letter replay", _describe(positions), None, f"refused: {why}")
            return self.render(request, "replay.html", status=400, report=None, positions=[], error=why)
        _audit(session, "dead-letter replay", _describe(positions), None,
               f"replayed {report.replayed} of {report.matched}")  # fmt: skip
        return self.render(request, "replay.html", report=report, positions=[], predictions=[])

    def _remember(self, plan: str, outcome: str) -> None:
        self._done_plans[plan] = outcome
        while len(self._done_plans) > DONE_PLANS:
            self._done_plans.popitem(last=False)


# ---- helpers ---------------------------------------------------------------------------------


def _field(value: Any) -> str:
    """A form value as kept: printable characters only (no forged log lines), bounded."""
    if value is None:
        return ""
    return "".join(ch for ch in str(value)[: MAX_FIELD * 4] if ch.isprintable()).strip()[:MAX_FIELD]


def _hostname(host: str | None) -> str:
    if not host:
        return ""
    if host.startswith("["):  # [::1]:8090
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _job_query(form: dict[str, str]) -> JobQuery:
    now_ms = int(time.time() * 1000)
    before = None
    if form["before"]:
        at, sep, rid = form["before"].partition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,15}", at):
            raise OperatorError(f"not a page cursor: {form['before']!r}")
        before = (int(at), rid)
    return JobQuery(
        request_id=form["request_id"] or None,
        tenant=form["tenant"] or None,
        connection=form["connection"] or None,
        vendor=form["vendor"] or None,
        status=form["status"].upper() or None,
        since_ms=parse_time(form["since"], now_ms=now_ms, flag="since") if form["since"] else None,
        until_ms=parse_time(form["until"], now_ms=now_ms, flag="until") if form["until"] else None,
        before=before,
        limit=PAGE,
    )


def _positions(values: list[Any]) -> list[tuple[int, int]]:
    positions = sorted({parse_position(str(v), flag="dead letter") for v in values[: MAX_SELECTED + 1]})
    if not 0 < len(positions) <= MAX_SELECTED:
        raise OperatorError(f"select between 1 and {MAX_SELECTED} dead letters")
    return positions


def _describe(positions: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"{p}:{o}" for p, o in positions[:20])
    return shown + (f" and {len(positions) - 20} more" if len(positions) > 20 else "")


def _audit(session: Session, action: str, target: str, reason: str | None, result: Any) -> None:
    # A fresh logger per action (they are rare): its processors are the ones configured now.
    audit = structlog.get_logger("export_worker.console.audit")
    audit.info("console action", who=session.who, action=action, target=target,
               reason=redact_text(reason) if reason else None, result=result)  # fmt: skip


@asynccontextmanager
async def serve(settings: Settings, options: ConsoleOptions) -> AsyncIterator[tuple[Console, str]]:
    """The console listening on ``options.host``/``port`` (0: a free port); yields it
    and its base URL."""
    console = Console(settings, options)
    async with console.running():
        runner = web.AppRunner(console.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, options.host, options.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            host = options.host if ":" not in options.host else f"[{options.host}]"
            url = f"http://{host}:{port}"
            log.info("console listening", url=url, read_only=not console.auth.enabled)
            yield console, url
        finally:
            await runner.cleanup()
