"""Fault injection shared by every simulator.

A ``FaultPlan`` is set at start-up or at runtime through ``POST /_sim/faults`` (JSON).
Counters (``next_401`` ...) fire on the next N API calls; rates (``rate_429`` ...) fire
at random with that probability. ``lost_submit`` creates the job and then drops the
answer (the connection is closed without a response): the hardest fault for a client.

Hostile-vendor mode: answers no honest vendor gives, for clients that must survive them
(``huge``, ``hang``, ``garbage_json``, ``wrong_shape``, ``wrong_content_type``, and
``retry_after_raw`` for any Retry-After text). They hit the calls ``hostile_on`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from worker.scheduler import Limiter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CallKind = Callable[[web.Request], "str | None"]

# What ``FaultPlan.hostile_on`` may name: every call, or one kind of call as the
# simulators tell them apart (``Simulator.call_kind``).
HOSTILE_TARGETS = ("all", "token", "submit", "poll", "download", "reconcile", "cancel")
STREAM_CHUNK_BYTES = 64 * 1024
HANG_CHECK_S = 0.05
# Invalid JSON, served as application/json (cycled through in turn).
GARBAGE_JSON: tuple[bytes, ...] = (
    b'{"status": "Success", "jobId": "',  # cut off
    b"{'successful': True, 'status': 'COMPLETE'}",  # a Python repr
    b'{"status": "Success",}',  # a trailing comma
    b'\xff\xfe{\x00"\x00garbage\x00',  # not even UTF-8
)
# Valid JSON of the wrong shape (cycled through in turn): a list, an object without any
# expected field, and an object whose expected fields have the wrong types.
WRONG_SHAPES: tuple[Any, ...] = (
    ["unexpected", 1, None],
    {"unexpected": True, "items": []},
    {
        "jobId": 12345,
        "JobId": ["not", "a", "string"],
        "status": 7,
        "Status": {"not": "a string"},
        "successful": "true",
        "jobCode": 42,
        "data": "not-an-object",
        "job": [],
        "report": "none",
        "operations": {"not": "a list"},
        "jobs": "none",
        "user": {"jwt": 42},
        "access_token": 123,
        "expires_in": "soon",
    },
)
WRONG_CONTENT_TYPES = ("text/html", "application/octet-stream")


@dataclass
class FaultPlan:
    next_401: int = 0  # answer 401 to the next N authenticated calls (token "expired")
    next_429: int = 0  # answer 429 to the next N calls
    next_5xx: int = 0  # answer 503 to the next N calls
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0  # hold the answer for ``timeout_s`` (clients time out)
    timeout_s: float = 60.0
    retry_after_s: float = 2.0  # Retry-After sent with 429s
    slow_s: float = 0.0  # added to every answer
    lost_submit: float = 0.0  # probability a submit creates the job but the answer is lost
    next_lost_submit: int = 0
    slow_jobs: float = 0.0  # probability a job takes ``slow_factor`` times longer
    slow_factor: float = 5.0
    fail_jobs: float = 0.0  # probability a job ends in the vendor's failed status
    next_fail: int = 0  # the next N jobs fail
    malformed: float = 0.0  # probability of an HTML error page with status 200
    next_malformed: int = 0
    # The account's quota, every client of this simulator together (a vendor sees one
    # account, not one process): API calls beyond this many a second (a token bucket
    # holding one second's worth) get 429 with the whole seconds until the next call
    # would be allowed as Retry-After. 0: no quota.
    account_rate_per_s: float = 0.0
    # ---- hostile vendor ----------------------------------------------------------------
    # When set, every 429 carries exactly this Retry-After text instead of
    # ``retry_after_s``: "Infinity", "nan", "-5", "1e309", "Fri, 31 Dec 9999 23:59:59 GMT".
    retry_after_raw: str = ""
    # 200 with a JSON-looking body of ``huge_bytes`` bytes, streamed (never held whole in
    # memory): with a Content-Length, or chunked without one when ``huge_chunked``.
    huge: float = 0.0
    next_huge: int = 0
    huge_bytes: int = 50_000_000
    huge_chunked: bool = False
    # Take the request and never answer: held until the client goes away (or the
    # simulator stops; it never delays a shutdown).
    hang: float = 0.0
    next_hang: int = 0
    # 200, Content-Type application/json, a body that is not JSON (GARBAGE_JSON in turn).
    garbage_json: float = 0.0
    next_garbage_json: int = 0
    # 200, valid JSON of the wrong shape: a list, an object without the expected fields,
    # or one whose fields have the wrong types (WRONG_SHAPES in turn).
    wrong_shape: float = 0.0
    next_wrong_shape: int = 0
    # 200 carrying the vendor's real answer body (its status and other headers dropped),
    # labelled text/html or application/octet-stream in turn. The call is really made.
    wrong_content_type: float = 0.0
    next_wrong_content_type: int = 0
    # Which calls the hostile faults above hit (counters count only those calls):
    #   "all"       every vendor route, token endpoints and file downloads included;
    #   "token"     the token / login endpoint only;
    #   "submit"    the calls that create a job (OpenGate: also its append/activate PUTs);
    #   "poll"      the job status call (Unicommerce's is a POST);
    #   "download"  what fetches a result: Itron's blob link, Unicommerce's CSV link,
    #               OpenGate's operations listing and history (Elastic Path has none);
    #   "reconcile" the job lookups (Elastic Path's list, OpenGate's search);
    #   "cancel"    OpenGate's DELETE.
    # Token endpoints are hit only by "all" and "token": a hostile submit, poll or
    # download is then one call, not also the token fetch that may precede it.
    hostile_on: str = "all"

    def __post_init__(self) -> None:
        self._check()

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        values = {key: _coerce(key, getattr(self, key), value) for key, value in changes.items()}
        before = self.as_dict()
        for key, value in values.items():
            setattr(self, key, value)
        try:
            self._check()
        except ValueError:
            for key, value in before.items():
                setattr(self, key, value)
            raise

    def _check(self) -> None:
        if self.hostile_on not in HOSTILE_TARGETS:
            raise ValueError(f"hostile_on must be one of {', '.join(HOSTILE_TARGETS)}, not {self.hostile_on!r}")
        if any(c in self.retry_after_raw for c in "\r\n\0"):
            raise ValueError("retry_after_raw must be one line of header text")
        if self.huge_bytes < 0:
            raise ValueError("huge_bytes must not be negative")
        if not 0 <= self.account_rate_per_s < float("inf"):
            raise ValueError("account_rate_per_s must be a finite number, 0 or more")

    def hostile_hits(self, call: str | None) -> bool:
        """Whether the hostile faults apply to a call of this kind."""
        return call is not None and self.hostile_on in ("all", call)

    def take(self, counter: str, rate: float, rng: random.Random) -> bool:
        left = getattr(self, counter)
        if left > 0:
            setattr(self, counter, left - 1)
            return True
        return rate > 0 and rng.random() < rate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AccountQuota:
    """The account's quota (``FaultPlan.account_rate_per_s``), as the worker's own token
    bucket (``worker.scheduler.Limiter``) holding one second's worth, and what it saw."""

    calls: int = 0  # API calls that reached the quota
    refused: int = 0  # of them, answered 429
    _bucket: Limiter | None = field(default=None, repr=False)

    def take(self, rate_per_s: float, now: float) -> int | None:
        """None when the call may go on; else the Retry-After seconds (at least 1)."""
        if rate_per_s <= 0:
            return None
        self.calls += 1
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = Limiter(max_concurrency=1, rate_per_s=rate_per_s)
        elif bucket.rate_per_s != rate_per_s:
            bucket.resize(now, 1, rate_per_s)
        if bucket.try_acquire(now):
            bucket.release()  # a rate only: no call is held
            return None
        self.refused += 1
        return max(1, math.ceil(bucket.seconds_to_token(now)))


# Set on a request whose handler ran but whose answer the client cannot read.
ANSWER_GARBLED = web.RequestKey("answer_garbled", bool)


def _coerce(name: str, current: Any, value: Any) -> Any:
    """``value`` as the type of the field it sets (JSON gives ints for floats, etc.)."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"{name} must be true or false")
    if isinstance(current, str):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number")
    return type(current)(value)


class Faults:
    """Holds the plan, counts what was injected, and applies it as middleware."""

    def __init__(self, plan: FaultPlan | None = None, *, seed: int | None = None) -> None:
        self.plan = plan or FaultPlan()
        self.rng = random.Random(seed)
        self.injected: dict[str, int] = {}
        self.rate_limited_at: list[float] = []  # monotonic times 429s were answered
        self.quota = AccountQuota()
        self._stopping: asyncio.Event | None = None  # set when the simulator stops: held answers give up

    def open(self) -> None:
        """The simulator starts (in the running loop): answers may be held again."""
        self._stopping = asyncio.Event()

    def close(self) -> None:
        """The simulator stops: every held answer (hang, huge, timeout) gives up now."""
        if self._stopping is not None:
            self._stopping.set()

    @property
    def closing(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def _until_closed(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the simulator stops meanwhile."""
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))

    def count(self, name: str) -> None:
        self.injected[name] = self.injected.get(name, 0) + 1

    def job_fails(self) -> bool:
        hit = self.plan.take("next_fail", self.plan.fail_jobs, self.rng)
        if hit:
            self.count("failed_job")
        return hit

    def job_slow(self) -> bool:
        hit = self.plan.slow_jobs > 0 and self.rng.random() < self.plan.slow_jobs
        if hit:
            self.count("slow_job")
        return hit

    def submit_lost(self) -> bool:
        hit = self.plan.take("next_lost_submit", self.plan.lost_submit, self.rng)
        if hit:
            self.count("lost_submit")
        return hit

    def middleware(
        self,
        *,
        is_api: Callable[[web.Request], bool],
        authenticated: Callable[[web.Request], bool],
        kind: CallKind | None = None,
    ) -> Any:
        """Faults as aiohttp middleware. The classic faults hit API calls (``is_api``);
        the hostile ones hit the calls ``hostile_on`` names, as ``kind`` tells them
        (None: not a vendor route, e.g. ``/_sim``)."""

        @web.middleware
        async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
            api = is_api(request)
            call = kind(request) if kind is not None else ("api" if api else None)
            if not api and call is None:
                return await handler(request)
            plan = self.plan
            if api:
                if plan.slow_s > 0:
                    await asyncio.sleep(plan.slow_s)
                wait_s = self.quota.take(plan.account_rate_per_s, time.monotonic())
                if wait_s is not None:
                    self.count("quota_429")
                    self.rate_limited_at.append(time.monotonic())
                    return web.json_response(
                        {"error": "account quota exceeded"}, status=429, headers={"Retry-After": str(wait_s)}
                    )
                if plan.take("next_429", plan.rate_429, self.rng):
                    self.count("429")
                    self.rate_limited_at.append(time.monotonic())
                    return web.json_response(
                        {"error": "too many requests"},
                        status=429,
                        headers={"Retry-After": plan.retry_after_raw or f"{plan.retry_after_s:g}"},
                    )
                if plan.take("next_5xx", plan.rate_5xx, self.rng):
                    self.count("5xx")
                    return web.Response(
                        status=503,
                        text="<html><body><h1>503 Service Unavailable</h1></body></html>",
                        content_type="text/html",
                    )
                if plan.take("next_malformed", plan.malformed, self.rng):
                    self.count("malformed")
                    return web.Response(
                        status=200, text="<html><body>Gateway error</body></html>", content_type="text/html"
                    )
                if authenticated(request) and plan.next_401 > 0:
                    plan.next_401 -= 1
                    self.count("401")
                    return web.json_response({"error": "invalid_token"}, status=401)
            if plan.hostile_hits(call):
                hostile = await self._hostile(request, handler)
                if hostile is not None:
                    return hostile
            if api and plan.rate_timeout > 0 and self.rng.random() < plan.rate_timeout:
                self.count("timeout")
                await self._until_closed(plan.timeout_s)
            return await handler(request)

        return inject

    # ---- hostile vendor ------------------------------------------------------------------
    async def _hostile(self, request: web.Request, handler: Handler) -> web.StreamResponse | None:
        plan = self.plan
        if plan.take("next_hang", plan.hang, self.rng):
            self.count("hang")
            return await self._hang(request)
        if plan.take("next_huge", plan.huge, self.rng):
            self.count("huge")
            return await self._huge(request, plan.huge_bytes, chunked=plan.huge_chunked)
        if plan.take("next_garbage_json", plan.garbage_json, self.rng):
            body = GARBAGE_JSON[self._turn("garbage_json") % len(GARBAGE_JSON)]
            return web.Response(status=200, body=body, content_type="application/json")
        if plan.take("next_wrong_shape", plan.wrong_shape, self.rng):
            shape = WRONG_SHAPES[self._turn("wrong_shape") % len(WRONG_SHAPES)]
            return web.json_response(shape, status=200)
        if plan.take("next_wrong_content_type", plan.wrong_content_type, self.rng):
            content_type = WRONG_CONTENT_TYPES[self._turn("wrong_content_type") % len(WRONG_CONTENT_TYPES)]
            real = await handler(request)
            request[ANSWER_GARBLED] = True  # a job it created may be unknown to the client
            body = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b""
            return web.Response(status=200, body=body, content_type=content_type)
        return None

    def _turn(self, name: str) -> int:
        """Count one more ``name`` fault; how many came before it (picks the variant)."""
        before = self.injected.get(name, 0)
        self.count(name)
        return before

    def _gone(self, request: web.Request) -> bool:
        transport = request.transport
        return self.closing or transport is None or transport.is_closing()

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer: wait until the client hangs up (looked at every HANG_CHECK_S) or
        the simulator stops."""
        while not self._gone(request):
            await self._until_closed(HANG_CHECK_S)
        return await drop_connection(request)

    async def _huge(self, request: web.Request, size: int, *, chunked: bool) -> web.StreamResponse:
        """``size`` bytes of ``{"padding": "xxx..."}``, written a chunk at a time."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        head, tail = b'{"padding": "', b'"}'
        if size < len(head) + len(tail):
            head, tail = b"", b""
        fill = size - len(head) - len(tail)
        chunk = b"x" * STREAM_CHUNK_BYTES
        try:
            await response.prepare(request)
            await response.write(head)
            while fill > 0:
                if self._gone(request):
                    return await drop_connection(request)
                part = chunk if fill >= len(chunk) else chunk[:fill]
                await response.write(part)
                fill -= len(part)
            await response.write(tail)
            await response.write_eof()
        except ConnectionError:  # the client stopped reading and hung up
            return await drop_connection(request)
        return response


async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without answering: a lost reply."""
    transport = request.transport
    if transport is not None:
        transport.close()
    raise asyncio.CancelledError  # aiohttp stops handling this request quietly
