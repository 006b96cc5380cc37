"""Fleet budgets (issue 14): three workers share one vendor account whose quota is R
calls/s (the simulator answers 429 with Retry-After beyond it). With fleet budgets each
worker sends its share of the connection's rate (the configured R is the fleet's);
baseline in the same run: per-process budgets, every worker allowed R.

Figures: the share of vendor calls answered 429, and the calls the vendor accepted per
second while every worker had work (from the first request to 90 % of the jobs ended)
against R.

    python -m bench.budgets [--quick]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp

from bench.common import bench_main, bench_settings, fleet, itron_conn, simulator
from worker.budgets import BudgetMode
from worker.config import PolicyConfig
from worker.kafka import admin_client, ensure_topics
from worker.testing import OutputReader, Publisher, finished, itron_request, terminal

RATE = 150.0  # the account's quota, calls/s: the connection's configured rate_per_s
WORKERS = 3
JOBS, QUICK_JOBS = 1_000, 600
STAGE_S = 0.3  # each of the simulator's three stages: a job runs ~1 s
POLICY = PolicyConfig(
    first_poll_s=0.5, poll_initial_s=0.5, poll_multiplier=1.0, poll_max_s=0.5, retry_initial_s=0.5, retry_max_s=2.0
)


@dataclass
class FleetRun:
    mode: str
    jobs: int
    calls: int  # API calls that reached the vendor
    refused: int  # of them, 429 for the account's quota
    busy_s: float  # first request published -> 90 % of jobs ended
    accepted_busy: int  # calls accepted meanwhile
    total_s: float

    @property
    def refused_share(self) -> float:
        return self.refused / self.calls if self.calls else 0.0

    @property
    def accepted_rate(self) -> float:
        return self.accepted_busy / self.busy_s if self.busy_s else 0.0


async def quota(url: str) -> tuple[int, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/rate-limits") as r:
        seen = json.loads(await r.text())["account_quota"]
    return int(seen["calls"]), int(seen["refused"])


async def run(bootstrap: str, mode: BudgetMode, jobs: int) -> FleetRun:
    settings = bench_settings(bootstrap, f"fleet-{mode.value}", budget_mode=mode, commit_interval_ms=100)
    await ensure_topics(settings, admin_client(settings))
    async with simulator("itron", stage_seconds=STAGE_S, faults={"account_rate_per_s": RATE}, record=False) as url:
        conn = {"itron": itron_conn(url, POLICY, rate_per_s=RATE, max_concurrency=32)}
        async with fleet(settings, conn, f"fleet-{mode.value}", WORKERS):
            calls0, refused0 = await quota(url)
            ids = [f"fleet-{mode.value}-{i}" for i in range(jobs)]
            async with Publisher(settings) as pub, OutputReader(settings, include_jobs=False) as reader:
                started = time.monotonic()
                for request_id in ids:
                    await pub.send(itron_request(request_id))
                await pub.flush()
                most = int(jobs * 0.9)
                await reader.wait_for(lambda o: len(finished(o, ids)) >= most, timeout=1200, what="90 % ended")
                busy_s = time.monotonic() - started
                calls90, refused90 = await quota(url)
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=1200, what="every job ended")
                total_s = time.monotonic() - started
            failed = [r for r in ids if out.statuses(r)[-1] != "SUCCEEDED"]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[:3]}")
            calls, refused = await quota(url)
    accepted_busy = (calls90 - refused90) - (calls0 - refused0)
    return FleetRun(mode.value, jobs, calls - calls0, refused - refused0, busy_s, accepted_busy, total_s)


@dataclass
class FleetBench:
    fleet: FleetRun
    baseline: FleetRun


async def measure(bootstrap: str, quick: bool = False) -> FleetBench:
    jobs = QUICK_JOBS if quick else JOBS
    return FleetBench(await run(bootstrap, BudgetMode.FLEET, jobs), await run(bootstrap, BudgetMode.PROCESS, jobs))


def rows(b: FleetBench) -> list[tuple[str, str, str, str, str]]:
    f, p = b.fleet, b.baseline
    return [
        (
            f"{WORKERS} workers, {f.jobs} jobs, one account at {RATE:g} calls/s: calls answered 429",
            f"{f.refused_share:.2%} ({f.refused} of {f.calls})",
            f"{p.refused_share:.2%} ({p.refused} of {p.calls}) per-process budgets",
            "-",
            "<= 1 %",
        ),
        (
            "calls the vendor accepted per second (first request to 90 % ended)",
            f"{f.accepted_rate:.0f}/s in {f.busy_s:.0f} s (all ended in {f.total_s:.0f} s)",
            f"{p.accepted_rate:.0f}/s in {p.busy_s:.0f} s per-process budgets (all ended in {p.total_s:.0f} s)",
            f"{f.accepted_rate / RATE:.2f} of R",
            ">= 0.90 R",
        ),
    ]


def lines(b: FleetBench) -> list[str]:
    f = b.fleet
    ok_429 = f.refused_share <= 0.01
    ok_rate = f.accepted_rate >= 0.9 * RATE
    return [
        f"fleet_429_share {f.refused_share:.4f} <=0.01 {'ok' if ok_429 else 'miss'}",
        f"fleet_accepted_rate_of_quota {f.accepted_rate / RATE:.2f} >=0.90 {'ok' if ok_rate else 'miss'}",
    ]


if __name__ == "__main__":
    bench_main(measure, rows, lines)
