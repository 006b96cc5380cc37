"""Exclusive job kinds (issue 14): Elastic Path runs one billing run and one payment run
per store at a time. 40 runs of those two kinds (20 each) through three workers, against
the strict simulator (it refuses an overlapping run with 409): refused calls per job, and
the time until every run ended against the serial minimum (20 runs one after the other;
the two kinds run side by side). Baseline in the same run: the same fleet with no
exclusive kinds declared, left to the vendor's refusals and the engine's busy retry.

    python -m bench.exclusive [--quick]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp

from bench.common import bench_main, bench_settings, fleet, simulator
from worker.config import PolicyConfig
from worker.kafka import admin_client, ensure_topics
from worker.simulators.elasticpath import demo_connection
from worker.testing import OutputReader, Publisher, elasticpath_request, terminal

WORKERS = 3
RUNS, QUICK_RUNS = 30, 20  # half billing runs, half payment runs
STAGE_S = 0.7  # the simulator's three stages: a run takes 2.1 s
POLICY = PolicyConfig(
    first_poll_s=0.1, poll_initial_s=0.1, poll_multiplier=1.0, poll_max_s=0.1, retry_initial_s=0.2, busy_retry_s=1.0
)


@dataclass
class ExclusiveRun:
    runs: int
    refused: int  # 409s: a run refused because one of its kind was running
    seconds: float  # first request published -> every run ended
    serial_s: float  # the runs of one kind one after the other

    @property
    def refused_per_job(self) -> float:
        return self.refused / self.runs

    @property
    def ratio(self) -> float:
        return self.seconds / self.serial_s


async def busy_refused(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/rate-limits") as r:
        return int(json.loads(await r.text())["busy_refused"])


async def run(bootstrap: str, runs: int, *, exclusive: bool) -> ExclusiveRun:
    name = "excl" if exclusive else "excl-none"
    settings = bench_settings(bootstrap, name, commit_interval_ms=50)
    await ensure_topics(settings, admin_client(settings))
    async with simulator("elasticpath", stage_seconds=STAGE_S, record=False) as url:
        conf = demo_connection(url).model_copy(
            update={"policy": POLICY, "max_concurrency": 32, "rate_per_s": 500.0}
            | ({} if exclusive else {"exclusive_kinds": []})
        )
        async with fleet(settings, {"ep": conf}, name, WORKERS):
            kinds = ("BILLING_RUN", "PAYMENT_RUN")
            ids = [(f"{name}-{kinds[i % 2][:3].lower()}-{i}", kinds[i % 2]) for i in range(runs)]
            async with Publisher(settings) as pub, OutputReader(settings, include_jobs=False) as reader:
                started = time.monotonic()
                for request_id, kind in ids:
                    await pub.send(elasticpath_request(request_id, kind))
                await pub.flush()
                out = await reader.wait_for(lambda o: terminal(o, [r for r, _ in ids]), timeout=1800, what="all ended")
                seconds = time.monotonic() - started
            failed = [r for r, _ in ids if out.statuses(r)[-1] != "SUCCEEDED"]
            if failed:
                raise RuntimeError(f"{len(failed)} runs did not succeed, e.g. {failed[:3]}")
            refused = await busy_refused(url)
    return ExclusiveRun(runs, refused, seconds, (runs / 2) * 3 * STAGE_S)


@dataclass
class ExclusiveBench:
    exclusive: ExclusiveRun
    baseline: ExclusiveRun


async def measure(bootstrap: str, quick: bool = False) -> ExclusiveBench:
    runs = QUICK_RUNS if quick else RUNS
    return ExclusiveBench(await run(bootstrap, runs, exclusive=True), await run(bootstrap, runs, exclusive=False))


def rows(b: ExclusiveBench) -> list[tuple[str, str, str, str, str]]:
    e, n = b.exclusive, b.baseline
    return [
        (
            f"{e.runs} Elastic Path billing and payment runs, {WORKERS} workers: refused calls per run",
            f"{e.refused_per_job:.2f} ({e.refused} refused)",
            f"{n.refused_per_job:.2f} ({n.refused}) with no exclusive kinds (vendor refusals, busy retry)",
            "-",
            "<= 1",
        ),
        (
            "time until every run ended, against the serial minimum",
            f"{e.seconds:.0f} s (serial minimum {e.serial_s:.0f} s)",
            f"{n.seconds:.0f} s with no exclusive kinds",
            f"{e.ratio:.2f}",
            "<= 1.20",
        ),
    ]


def lines(b: ExclusiveBench) -> list[str]:
    e = b.exclusive
    return [
        f"exclusive_refused_per_job {e.refused_per_job:.2f} <=1 {'ok' if e.refused_per_job <= 1 else 'miss'}",
        f"exclusive_time_vs_serial {e.ratio:.2f} <=1.20 {'ok' if e.ratio <= 1.2 else 'miss'}",
    ]


if __name__ == "__main__":
    bench_main(measure, rows, lines)
