"""Vendor politeness.

1. Requests per finished job (submit + polls) for jobs of known durations under the
   default backoff schedule, run through the engine itself in virtual time; baseline:
   a fixed-interval poller at the same first interval.
2. A 429 storm against a real worker: requests that reached the vendor after it had
   answered 429 and before that Retry-After expired (target 0); baseline: a naive client
   that retries after a fixed 0.2 s, at the same concurrency.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass

import aiohttp

from bench.common import bench_settings, itron_conn, simulator, start_worker, wait_ready
from bench.itron_client import itron_headers
from worker.config import PolicyConfig
from worker.engine.machine import Context, step
from worker.engine.model import (
    CallVendor,
    FileInfo,
    PollAnswered,
    RequestInfo,
    RequestReceived,
    Status,
    SubmitAnswered,
    TimerFired,
)
from worker.engine.policy import Policy
from worker.kafka import admin_client, ensure_topics
from worker.testing import OutputReader, Publisher, itron_request, terminal

DURATIONS_S = (10, 60, 300, 1800)
RETRY_AFTER_S = 1.0
IN_FLIGHT_MARGIN_S = 0.1  # a request already sent when the 429 was answered may still arrive
SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"


def calls_for(duration_s: float, policy: Policy, u: float = 0.5) -> int:
    """Vendor calls the engine makes for a job that finishes after ``duration_s``."""
    now = 0
    request = RequestInfo("r", "t", "c", "itron", "{}", 0, 0, 0)
    state = step(None, RequestReceived(request), Context(now, u, policy)).state
    calls = 0
    while state is not None and state.open:
        now = max(now, state.next_action_at_ms)
        tr = step(state, TimerFired(), Context(now, u, policy))
        kinds = [e.kind.value for e in tr.effects if isinstance(e, CallVendor)]
        calls += len(kinds)
        state = tr.state
        assert state is not None
        if "submit" in kinds:
            state = step(state, SubmitAnswered("j", "New", Status.QUEUED), Context(now, u, policy)).state
        elif "poll" in kinds:
            done = now >= duration_s * 1000
            answer = (
                PollAnswered("Success", Status.SUCCEEDED, file=FileInfo("https://x", "zip", now + 1))
                if done
                else PollAnswered("Running", Status.RUNNING)
            )
            state = step(state, answer, Context(now, u, policy)).state
    return calls


@dataclass
class Politeness:
    calls_per_job: dict[int, float]  # duration -> engine calls
    baseline_calls_per_job: dict[int, float]
    storm_429s: int
    violations: int
    baseline_violations: int


def violations(rate_limited_at: list[float], arrivals: list[float]) -> int:
    count = 0
    for t in arrivals:
        if any(t429 + IN_FLIGHT_MARGIN_S < t < t429 + RETRY_AFTER_S for t429 in rate_limited_at):
            count += 1
    return count


async def sim_get(url: str, path: str) -> dict[str, list[float]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}{path}") as r:
        return json.loads(await r.text())  # type: ignore[no-any-return]


async def storm(bootstrap: str, n: int = 60) -> tuple[int, int]:
    settings = bench_settings(bootstrap, "storm")
    await ensure_topics(settings, admin_client(settings))
    faults = {"rate_429": 0.2, "retry_after_s": RETRY_AFTER_S}
    async with simulator("itron", stage_seconds=0.2, faults=faults) as url:
        policy = PolicyConfig(first_poll_s=0.2, poll_initial_s=0.2, poll_max_s=0.5, retry_initial_s=0.1)
        worker = start_worker(
            settings, {"itron": itron_conn(url, policy, max_concurrency=8, rate_per_s=500.0)}, "storm"
        )
        try:
            await wait_ready(worker)
            ids = [f"storm-{i}" for i in range(n)]
            async with Publisher(settings) as pub, OutputReader(settings, include_jobs=False) as reader:
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                await reader.wait_for(lambda o: terminal(o, ids), timeout=300, what="storm done")
        finally:
            worker.stop()
        seen = await sim_get(url, "/_sim/rate-limits")
    return len(seen["rate_limited_at"]), violations(seen["rate_limited_at"], seen["arrivals"])


async def naive_storm(n: int = 60) -> int:
    """A client that ignores Retry-After: retries a 429 after 0.2 s, 8 at a time (same 429 rate)."""
    faults = {"rate_429": 0.2, "retry_after_s": RETRY_AFTER_S}
    async with simulator("itron", stage_seconds=0.2, faults=faults) as url, aiohttp.ClientSession() as session:
        headers = await itron_headers(session, url)
        gate = asyncio.Semaphore(8)

        async def one() -> None:
            async with gate:
                while True:
                    h = {**headers, "Itron-CorrelationId": str(uuid.uuid4())}
                    body = {"filetype": "Csv", "tokens": {"A": "1"}, "isOhsRequest": False}
                    async with session.post(f"{url}/dpss/api/v1/subscriptions/{SUBSCRIPTION}/batch-request",
                                            json=body, headers=h) as r:  # fmt: skip
                        if r.status != 429:
                            return
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(one() for _ in range(n)))
        seen = await sim_get(url, "/_sim/rate-limits")
    return violations(seen["rate_limited_at"], seen["arrivals"])


async def measure(bootstrap: str) -> Politeness:
    policy = Policy()
    ours = {d: float(calls_for(d, policy)) for d in DURATIONS_S}
    fixed = {d: float(1 + math.ceil(d / policy.poll_initial_s)) for d in DURATIONS_S}
    n429, bad = await storm(bootstrap)
    naive_bad = await naive_storm()
    return Politeness(ours, fixed, n429, bad, naive_bad)


if __name__ == "__main__":
    from bench.common import broker

    started = time.monotonic()
    with broker() as bootstrap:
        print(asyncio.run(measure(bootstrap)), f"{time.monotonic() - started:.0f}s")
