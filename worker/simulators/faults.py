"""Fault injection shared by every simulator.

A ``FaultPlan`` is set at start-up or at runtime through ``POST /_sim/faults`` (JSON).
Counters (``next_401`` ...) fire on the next N API calls; rates (``rate_429`` ...) fire
at random with that probability. ``lost_submit`` creates the job and then drops the
answer (the connection is closed without a response): the hardest fault for a client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, type(getattr(self, key))(value))

    def take(self, counter: str, rate: float, rng: random.Random) -> bool:
        left = getattr(self, counter)
        if left > 0:
            setattr(self, counter, left - 1)
            return True
        return rate > 0 and rng.random() < rate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Holds the plan, counts what was injected, and applies it as middleware."""

    def __init__(self, plan: FaultPlan | None = None, *, seed: int | None = None) -> None:
        self.plan = plan or FaultPlan()
        self.rng = random.Random(seed)
        self.injected: dict[str, int] = {}
        self.rate_limited_at: list[float] = []  # monotonic times 429s were answered

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

    def middleware(self, *, is_api: Callable[[web.Request], bool], authenticated: Callable[[web.Request], bool]) -> Any:
        @web.middleware
        async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not is_api(request):
                return await handler(request)
            plan = self.plan
            if plan.slow_s > 0:
                await asyncio.sleep(plan.slow_s)
            if plan.take("next_429", plan.rate_429, self.rng):
                self.count("429")
                self.rate_limited_at.append(time.monotonic())
                return web.json_response(
                    {"error": "too many requests"},
                    status=429,
                    headers={"Retry-After": f"{plan.retry_after_s:g}"},
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
            if plan.rate_timeout > 0 and self.rng.random() < plan.rate_timeout:
                self.count("timeout")
                await asyncio.sleep(plan.timeout_s)
            return await handler(request)

        return inject


async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without answering: a lost reply."""
    transport = request.transport
    if transport is not None:
        transport.close()
    raise asyncio.CancelledError  # aiohttp stops handling this request quietly
