"""Open-job capacity and memory per open job: one worker process keeps N vendor jobs
open (a simulator whose jobs never finish), each polled every 30 s; poll lateness p99
must stay under 1 s. Baseline in the same run: a bare asyncio + aiohttp poller holding
the same jobs (one task per job, sleeping between polls).

Memory per open job is what one more open job costs: RSS is read with N/2 jobs open and
again with N, each after every job was polled at least once, and the growth between the
two is divided by N/2 (RocksDB's cache and memtables, capped, are left out). What a busy
worker holds whatever its number of jobs (connection pool, Kafka clients' buffers, code
first run) is reported apart as the fixed part, and the plain average (growth since
/readyz over N) beside it. The bare poller is measured the same way.

CPU per poll is measured in the steady state a long export lives in: every job has been
polled at least once, so each poll of the window finds the job as it was and changes
nothing. A job's first poll changes its status (SUBMITTED -> the vendor's first one):
a state record and a status event in a transaction. That costs more, once per status
change, and is reported apart, from the interval in which the second half's jobs were
polled for the first time."""

from __future__ import annotations

import asyncio
import gc
import math
import random
import re
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from bench.common import (
    bench_settings,
    cpu_seconds,
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

INTERVAL_S = 30.0  # the poll interval, and the measured window
TRIM_S = 5.0
# A job's first poll comes this long after its submit (+-20 %): after the last submits of
# a half (25,000 at the connection's 5,000 calls/s), so no submit falls in the interval
# the first polls are measured over, and without waiting a whole interval for them.
FIRST_POLL_S = 10.0
POLICY = PolicyConfig(first_poll_s=FIRST_POLL_S, poll_initial_s=INTERVAL_S, poll_multiplier=1.0, poll_max_s=INTERVAL_S)
SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"
LATENESS = "export_worker_timer_lateness_seconds"
TRIMS = "export_worker_memory_trims_total"
_STATUS_LABEL = re.compile(r'[{,]status="([^"]*)"')


@dataclass
class Capacity:
    open_jobs: int
    window_s: float
    polls: int
    p99_lateness_s: float
    on_time_fraction: float  # polls at most 1 s late
    kib_per_job: float  # RSS growth per open job from N/2 to N, RocksDB's capped budget left out
    average_kib_per_job: float  # RSS growth from /readyz to N open jobs, over N (fixed part included)
    fixed_mib: float  # the growth to N open jobs that is not N x kib_per_job
    cpu_s_per_1000_polls: float  # the worker process's CPU (all threads) over the window: polls that change nothing
    first_poll_cpu_s_per_1000: float  # a poll that changes the job's status (state, event, transaction)
    baseline_p99_lateness_s: float
    baseline_cpu_s_per_1000_polls: float
    baseline_kib_per_job: float  # the bare poller, measured the same way
    baseline_average_kib_per_job: float
    store_mib: float  # what RocksDB's cache and memtables grew by meanwhile (bounded)

    @property
    def jobs_per_core(self) -> float:
        """Open jobs one core could poll every interval at this CPU per poll (a
        projection from the measured window, not a run with that many jobs)."""
        return INTERVAL_S * 1000 / self.cpu_s_per_1000_polls


async def measure(bootstrap: str, n: int = 50_000) -> Capacity:
    # Memory is read right after a trim: trimming every 5 s (30 s by default) keeps the
    # bench from waiting for one.
    settings = bench_settings(bootstrap, "cap", commit_interval_ms=200, memory_trim_s=TRIM_S)
    await ensure_topics(settings, admin_client(settings))
    async with simulator("itron", stage_seconds=1e9, record=False) as sim_url:
        conn = itron_conn(sim_url, POLICY, rate_per_s=5000.0, max_concurrency=256)
        worker = start_worker(settings, {"itron": conn}, "cap")
        try:
            await wait_ready(worker)
            assert worker.port is not None
            half = n // 2

            async def open_jobs() -> float:
                """Open jobs submitted to the vendor (not ACCEPTED only)."""
                _, text = await scrape(worker.port)  # type: ignore[arg-type]
                return sum(count for status, count in _open_by_status(text).items() if status != "ACCEPTED")

            async def unpolled() -> float:
                """Open jobs not polled yet: still SUBMITTED (the first poll moves them on)."""
                _, text = await scrape(worker.port)  # type: ignore[arg-type]
                return _open_by_status(text).get("SUBMITTED", 0.0)

            async def memory() -> tuple[int, float]:
                """(RSS KiB, RocksDB cache and memtables KiB) right after the worker's next
                trim, so that both points are read with the same (no) freed memory kept."""
                _, text = await scrape(worker.port)  # type: ignore[arg-type]
                if TRIMS in text:  # a worker that trims (every 30 s by default)
                    trims = metric(text, TRIMS)
                    await eventually(lambda: _at_least(trimmed, trims + 1), timeout=120, interval=0.2, what="a trim")
                _, text = await scrape(worker.port)  # type: ignore[arg-type]
                return rss_kib(worker.pid), metric(text, "export_worker_store_memory_bytes") / 1024

            async def trimmed() -> float:
                return metric((await scrape(worker.port))[1], TRIMS)  # type: ignore[arg-type]

            idle_kib, idle_store = await memory()
            async with Publisher(settings) as pub:
                for i in range(half):
                    await pub.send(itron_request(f"cap-{i}"))
                await pub.flush()
                await eventually(lambda: _at_least(open_jobs, half), timeout=600, interval=1.0, what=f"{half} open")
                # Each of them polled once: the state it keeps from now on. (Not the timer
                # count: a submit is a timer firing too.)
                await eventually(lambda: _at_most(unpolled, 0), timeout=120, interval=1.0, what=f"{half} polled")
                half_kib, half_store = await memory()
                for i in range(half, n):
                    await pub.send(itron_request(f"cap-{i}"))
                await pub.flush()
            await eventually(lambda: _at_least(open_jobs, n), timeout=600, interval=1.0, what=f"{n} open")
            # The second half's first polls (each changes its job's status), among the
            # first half's polls that change nothing.
            _, first_before = await scrape(worker.port)
            first_polls = _open_by_status(first_before).get("SUBMITTED", 0.0)
            first_cpu_before = cpu_seconds(worker.pid)
            await eventually(lambda: _at_most(unpolled, 0), timeout=120, interval=1.0, what=f"{n} polled")
            first_cpu = cpu_seconds(worker.pid) - first_cpu_before
            # Steady state: every job is polled once per interval from now on, and finds
            # its job as it was.
            _, before = await scrape(worker.port)
            polls_meanwhile = _polls(before) - _polls(first_before)
            started, cpu_before = time.monotonic(), cpu_seconds(worker.pid)
            # The measured window itself, not a synchronisation: one whole interval, as the
            # jobs were opened within seconds and their polls come in a band every 30 s.
            await asyncio.sleep(INTERVAL_S)
            _, after = await scrape(worker.port)
            window, cpu = time.monotonic() - started, cpu_seconds(worker.pid) - cpu_before
            p99, on_time = quantile(histogram(before, LATENESS), histogram(after, LATENESS), 0.99)
            polls_in_window = int(_polls(after) - _polls(before))
            open_kib, open_store = await memory()
        finally:
            worker.stop()
        base_p99, base_cpu, base_kib, base_average = await bare_poller(sim_url, n, INTERVAL_S)
    # RocksDB's cache and memtables grow to their fixed budget whatever the number of
    # jobs: reported apart, not charged to each job.
    per_job = ((open_kib - half_kib) - (open_store - half_store)) / (n - half)
    per_poll = cpu / max(polls_in_window, 1)
    # What a first poll costs in all: the interval's CPU less what its other polls cost
    # at the steady rate, over the first polls.
    first_poll = (
        (first_cpu - per_poll * max(polls_meanwhile - first_polls, 0)) / first_polls if first_polls else math.nan
    )
    grown = (open_kib - idle_kib) - (open_store - idle_store)
    return Capacity(
        open_jobs=n,
        window_s=window,
        polls=polls_in_window,
        p99_lateness_s=p99,
        on_time_fraction=on_time,
        kib_per_job=per_job,
        average_kib_per_job=grown / n,
        fixed_mib=(grown - per_job * n) / 1024,
        cpu_s_per_1000_polls=per_poll * 1000,
        first_poll_cpu_s_per_1000=first_poll * 1000,
        baseline_p99_lateness_s=base_p99,
        baseline_cpu_s_per_1000_polls=base_cpu,
        baseline_kib_per_job=base_kib,
        baseline_average_kib_per_job=base_average,
        store_mib=(open_store - idle_store) / 1024,
    )


async def _at_least(read: Callable[[], Awaitable[float]], wanted: float) -> bool:
    return await read() >= wanted


async def _at_most(read: Callable[[], Awaitable[float]], wanted: float) -> bool:
    return await read() <= wanted


def _polls(metrics_text: str) -> float:
    """Timer firings so far, each observing its lateness once: polls, and submits (none
    once a half is open)."""
    return histogram(metrics_text, LATENESS).get(float("inf"), 0.0)


def _open_by_status(metrics_text: str) -> dict[str, float]:
    """``export_worker_open_jobs`` summed over vendors, by status."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("export_worker_open_jobs{"):
            labels, value = line.rsplit(" ", 1)
            status = _STATUS_LABEL.search(labels)
            if status is not None:
                counts[status[1]] = counts.get(status[1], 0.0) + float(value)
    return counts


async def bare_poller(sim_url: str, n: int, window_s: float) -> tuple[float, float, float, float]:
    """One asyncio task per job, each sleeping 30 s (spread) and polling; returns its p99
    lateness over the window, its CPU seconds per 1,000 polls there, its memory per job
    from N/2 to N and its average (KiB)."""
    lateness = array("d")
    measuring = False
    # No cap on connections of the session's own, as the worker's (``vendor_session``).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
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
        half = n // 2
        tasks = [asyncio.create_task(job(i)) for i in range(half)]
        await asyncio.sleep(INTERVAL_S)  # one full cycle before measuring, as for the worker
        half_kib = rss_kib_self()
        tasks += [asyncio.create_task(job(i)) for i in range(half, n)]
        # The window starts at once: every job polls within it, the second half for the
        # first time, so the memory read at its end is that of N jobs that have polled
        # (the lateness samples, 8 bytes each, are a rounding error of it).
        measuring = True
        cpu_before = time.process_time()
        await asyncio.sleep(window_s)
        cpu = time.process_time() - cpu_before
        open_kib = rss_kib_self()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(lateness)
    p99 = ordered[int(len(ordered) * 0.99)] if ordered else float("nan")
    return p99, cpu * 1000 / max(len(lateness), 1), (open_kib - half_kib) / (n - half), (open_kib - idle_kib) / n


def rss_kib_self() -> int:
    import os

    return rss_kib(os.getpid())


if __name__ == "__main__":
    import sys

    from bench.common import broker

    with broker() as bootstrap:
        print(asyncio.run(measure(bootstrap, int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)))
