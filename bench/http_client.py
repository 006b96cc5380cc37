"""CPU per vendor call of the worker's HTTP client (``worker.vendors.transport``) against
aiohttp's client set up as the worker had it (no connection cap, no cookie jar), both
polling one job of the Itron simulator (its own process), 64 calls at a time. Rounds
alternate between the two clients so that a drift of the machine's speed hits both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from bench.common import simulator
from bench.itron_client import itron_headers
from worker.vendors import vendor_session

CONCURRENCY = 64
ROUNDS = 3
SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"
CORRELATION = {"Itron-CorrelationId": "6d1b8f2e-9b43-4b3e-8a9d-2f2f3f4f5f6f", "Accept": "application/json"}


@dataclass
class HttpCost:
    calls: int
    client_us: float  # CPU per call, the worker's client
    aiohttp_us: float  # CPU per call, aiohttp's client

    @property
    def ratio(self) -> float:
        return self.client_us / self.aiohttp_us


async def measure(calls: int = 20_000) -> HttpCost:
    async with (
        simulator("itron", stage_seconds=1e9, record=False) as sim_url,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()) as session,
        vendor_session("export-worker/bench") as client,
    ):
        headers = {**await itron_headers(session, sim_url), **CORRELATION}
        base = f"{sim_url}/dpss/api/v1/subscriptions/{SUBSCRIPTION}/batch-request"
        async with session.post(
            base, json={"filetype": "Csv", "tokens": {"A": "1"}, "isOhsRequest": False}, headers=headers
        ) as r:
            url = f"{base}/{(await r.json())['jobId']}"
        timeout = aiohttp.ClientTimeout(total=30)

        async def by_aiohttp() -> None:
            async with session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as r:
                await r.read()
                assert r.status == 200

        async def by_client() -> None:
            status, _, _ = await client.request("GET", url, headers=headers, timeout_s=30, max_body_bytes=1 << 20)
            assert status == 200

        spent = {"client": 0.0, "aiohttp": 0.0}
        per_round = max(calls // ROUNDS, CONCURRENCY)
        for _ in range(ROUNDS):
            spent["aiohttp"] += await cpu_of(by_aiohttp, per_round)
            spent["client"] += await cpu_of(by_client, per_round)
    total = per_round * ROUNDS
    return HttpCost(total, spent["client"] / total * 1e6, spent["aiohttp"] / total * 1e6)


async def cpu_of(call: Callable[[], Awaitable[None]], n: int) -> float:
    """CPU seconds of ``n`` calls, ``CONCURRENCY`` at a time (after a warm-up)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(CONCURRENCY * 2)))
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.process_time() - started


if __name__ == "__main__":
    cost = asyncio.run(measure())
    print(f"{cost.calls} calls: worker's client {cost.client_us:.1f} µs CPU per call, aiohttp {cost.aiohttp_us:.1f} µs")
