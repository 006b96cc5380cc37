"""Open-job capacity and memory per open job: one worker process keeps N vendor jobs
open (a simulator whose jobs never finish), each polled every 30 s; poll lateness p99
must stay under 1 s. Baseline in the same run: a bare asyncio + aiohttp poller holding
the same jobs (one task per job, sleeping between polls)."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from dataclasses import dataclass

import aiohttp

from bench.common import (
    bench_settings,
    histogram,
    itron_conn,
    metric,
    quantile,
    rss_kib,
    scrape,
    simulator,
    start_worker,
    wait_ready,
)
from bench.itron_client import itron_headers
from worker.config import PolicyConfig
from worker.kafka import admin_client, ensure_topics
from worker.testing import Publisher, eventually, itron_request

INTERVAL_S = 30.0
POLICY = PolicyConfig(first_poll_s=INTERVAL_S, poll_initial_s=INTERVAL_S, poll_multiplier=1.0, poll_max_s=INTERVAL_S)
SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"
LATENESS = "export_worker_timer_lateness_seconds"


@dataclass
class Capacity:
    open_jobs: int
    window_s: float
    polls: int
    p99_lateness_s: float
    on_time_fraction: float  # polls at most 1 s late
    kib_per_job: float  # RSS growth per open job, RocksDB's fixed budget left out
    baseline_p99_lateness_s: float
    baseline_kib_per_job: float
    store_mib: float  # what RocksDB's cache and memtables grew by meanwhile (bounded)


async def measure(bootstrap: str, n: int = 50_000, window_s: float = 45.0) -> Capacity:
    settings = bench_settings(bootstrap, "cap", commit_interval_ms=200)
    await ensure_topics(settings, admin_client(settings))
    async with simulator("itron", stage_seconds=1e9, record=False) as sim_url:
        conn = itron_conn(sim_url, POLICY, rate_per_s=5000.0, max_concurrency=256)
        worker = start_worker(settings, {"itron": conn}, "cap")
        try:
            await wait_ready(worker)
            assert worker.port is not None
            idle_kib = rss_kib(worker.pid)
            _, idle = await scrape(worker.port)
            idle_store = metric(idle, "export_worker_store_memory_bytes")
            async with Publisher(settings) as pub:
                for i in range(n):
                    await pub.send(itron_request(f"cap-{i}"))
                await pub.flush()

            async def all_open() -> bool:
                _, text = await scrape(worker.port)  # type: ignore[arg-type]
                opened = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("export_worker_open_jobs{") and 'status="ACCEPTED"' not in line
                )
                return opened >= n

            await eventually(all_open, timeout=600, interval=1.0, what=f"{n} jobs submitted")
            # Steady state: every job is polled once per interval from now on.
            _, before = await scrape(worker.port)
            started = time.monotonic()
            await asyncio.sleep(window_s)  # the measured window itself, not a synchronisation
            _, after = await scrape(worker.port)
            window = time.monotonic() - started
            p99, on_time = quantile(histogram(before, LATENESS), histogram(after, LATENESS), 0.99)
            polls = int(histogram(after, LATENESS)[float("inf")] - histogram(before, LATENESS)[float("inf")])
            open_kib = rss_kib(worker.pid)
            # RocksDB's cache and memtables grow to their fixed budget whatever the number
            # of jobs: reported apart, not charged to each job.
            store_kib = (metric(after, "export_worker_store_memory_bytes") - idle_store) / 1024
        finally:
            worker.stop()
        base_p99, base_kib = await bare_poller(sim_url, n, window_s)
    per_job = (open_kib - idle_kib - store_kib) / n
    return Capacity(n, window, polls, p99, on_time, per_job, base_p99, base_kib, store_kib / 1024)


async def bare_poller(sim_url: str, n: int, window_s: float) -> tuple[float, float]:
    """One asyncio task per job, each sleeping 30 s (spread) and polling; returns its p99
    lateness over the window and its memory per job (KiB)."""
    lateness: list[float] = []
    measuring = False
    async with aiohttp.ClientSession() as session:
        correlation = {"Itron-CorrelationId": "6d1b8f2e-9b43-4b3e-8a9d-2f2f3f4f5f6f"}
        headers = {**await itron_headers(session, sim_url), **correlation}
        base = f"{sim_url}/dpss/api/v1/subscriptions/{SUBSCRIPTION}/batch-request"
        async with session.post(base, json={"filetype": "Csv", "tokens": {"A": "1"}, "isOhsRequest": False},
                                headers=headers) as r:  # fmt: skip
            job_id = (await r.json())["jobId"]
        gate = asyncio.Semaphore(256)

        async def job(i: int) -> None:
            due = time.monotonic() + random.uniform(0, INTERVAL_S)
            while True:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if measuring:
                    lateness.append(time.monotonic() - due)
                async with gate, session.get(f"{base}/{job_id}", headers=headers) as r:
                    await r.read()
                due += INTERVAL_S

        gc.collect()
        idle_kib = rss_kib_self()
        tasks = [asyncio.create_task(job(i)) for i in range(n)]
        await asyncio.sleep(INTERVAL_S)  # one full cycle before measuring, as for the worker
        open_kib = rss_kib_self()
        measuring = True
        await asyncio.sleep(window_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)] if lateness else float("nan")
    return p99, (open_kib - idle_kib) / n


def rss_kib_self() -> int:
    import os

    return rss_kib(os.getpid())


if __name__ == "__main__":
    import sys

    from bench.common import broker

    with broker() as bootstrap:
        print(asyncio.run(measure(bootstrap, int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)))
