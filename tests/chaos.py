"""Chaos run: N requests over all four vendors, several worker processes, simulators
injecting faults, a driver that SIGKILLs a random worker every few seconds (and the
broker once), and an independent checker reading every topic with read_committed.

    python -m tests.chaos [--requests 2000] [--workers 3] [--seed 1]     (make chaos)

Ends with one line:
    chaos: requests=N terminal=N lost=0 duplicate_vendor_jobs=D flagged=F
           duplicates_by_cause=answer_lost:A,at_kill:K,other:0 submits_in_flight_at_kills=S
           flagged_without_duplicate=W false_failed=0 duplicate_events=0 out_of_order=0 kills=K
and exits non-zero when a target is missed: lost, duplicate_events, out_of_order,
false_failed and duplicates of cause ``other`` must be 0, and every vendor job created
twice must be announced with possible_duplicate.

A vendor job created twice has a cause (tests.fleet.cause_of): ``answer_lost`` when the
simulator marked the earlier job's answer as never read by the client (dropped, or the
client gone: a held answer) or it took longer than the client timeout; ``at_kill`` when
the earlier submit was in flight (from its arrival at the simulator to 2 s after its
answer, the worker's commit) when a worker was SIGKILLed or the broker was down (until
one session timeout after it is back: a member whose session expired meanwhile loses its
partitions, and the uncommitted answers with them), or when the worker process that made
the call was SIGKILLed before it could commit the answer;
``other`` otherwise: a bug. ``false_failed`` counts FAILED requests whose vendor job did
not fail (or never existed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fleet import (
    CHAOS_POLICY,
    TERMINAL,
    Duplicates,
    Fleet,
    RigConfig,
    duplicates,
    itron_owners,
    make_request,
    owner_of,
    rig,
    sequence_problems,
)
from worker.output_reader import Output
from worker.testing import OutputReader, Publisher

__all__ = ["CHAOS_POLICY", "TERMINAL", "ChaosConfig", "ChaosResult", "Fleet", "make_request", "owner_of", "run_chaos"]


@dataclass
class ChaosConfig:
    requests: int = 2000
    workers: int = 3
    partitions: int = 6
    seed: int = 1
    kill_every_s: tuple[float, float] = (3.0, 6.0)
    max_kills: int | None = None
    broker_restart: bool = True
    deadline_s: float = 480.0
    workdir: Path = Path(".chaos")
    faults: dict[str, float] = field(
        default_factory=lambda: {
            "rate_429": 0.03,
            "retry_after_s": 0.5,
            "rate_5xx": 0.03,
            "lost_submit": 0.04,
            "slow_jobs": 0.1,
            "slow_factor": 4.0,
            "fail_jobs": 0.02,
            "rate_timeout": 0.003,
            "timeout_s": 6.0,
        }
    )
    stages_s: tuple[float, float, float] = (0.4, 0.4, 0.4)


@dataclass
class ChaosResult:
    requests: int
    terminal: int
    lost: int
    duplicate_vendor_jobs: int
    flagged: int
    duplicates_by_cause: dict[str, int]
    submits_in_flight_at_kills: int
    flagged_without_duplicate: int
    false_failed: int
    duplicate_events: int
    out_of_order: int
    kills: int
    broker_restarts: int
    crashes: int  # workers that exited on their own (see the problems)
    producers_replaced: int  # fenced producers replaced in place (the broker outage)
    seconds: float
    by_status: dict[str, int]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicate_events == 0
            and self.out_of_order == 0
            and self.flagged == self.duplicate_vendor_jobs
            and self.duplicates_by_cause.get("other", 0) == 0
            and self.false_failed == 0
        )

    def line(self) -> str:
        causes = ",".join(f"{k}:{v}" for k, v in self.duplicates_by_cause.items())
        return (
            f"chaos: requests={self.requests} terminal={self.terminal} lost={self.lost} "
            f"duplicate_vendor_jobs={self.duplicate_vendor_jobs} flagged={self.flagged} "
            f"duplicates_by_cause={causes} submits_in_flight_at_kills={self.submits_in_flight_at_kills} "
            f"flagged_without_duplicate={self.flagged_without_duplicate} false_failed={self.false_failed} "
            f"duplicate_events={self.duplicate_events} out_of_order={self.out_of_order} kills={self.kills} "
            f"crashes={self.crashes} producers_replaced={self.producers_replaced}"
        )


# ---- the checker ---------------------------------------------------------------------------


def check(ids: list[str], out: Output) -> tuple[int, list[str], dict[str, int]]:
    """(terminal requests, problems, final statuses); every SUCCEEDED has one FileReady."""
    problems: list[str] = []
    last = out.last_status()
    originals = Counter(f["request_id"] for f in out.files if not f["reannounced"])
    terminal = 0
    by_status: Counter[str] = Counter()
    for r in ids:
        status = last.get(r)
        by_status[status or "NONE"] += 1
        if status in TERMINAL:
            terminal += 1
            if status == "SUCCEEDED" and originals[r] != 1:
                problems.append(f"{r}: SUCCEEDED with {originals[r]} FileReady")
        else:
            problems.append(f"{r}: not terminal (last {status})")
    return terminal, problems, dict(by_status)


# ---- the driver ----------------------------------------------------------------------------


async def run_chaos(cfg: ChaosConfig, *, bootstrap: str | None = None, say: Any = print) -> ChaosResult:
    rng = random.Random(cfg.seed)
    started = time.monotonic()
    rig_cfg = RigConfig(
        name="chaos", partitions=cfg.partitions, seed=cfg.seed, workdir=cfg.workdir, faults=dict(cfg.faults),
        stages_s=cfg.stages_s,
    )  # fmt: skip
    async with rig(rig_cfg, bootstrap=bootstrap) as r:
        fleet, sims, settings = r.fleet, r.sims, r.settings
        fleet.rng = rng
        vendors = sorted(sims)
        ids = [f"c{r.run}-{i:05d}" for i in range(cfg.requests)]
        itron_ids = itron_owners(ids)
        say(f"chaos: {cfg.requests} requests over {', '.join(vendors)}; {cfg.workers} workers; logs in {r.logs}")
        for slot in range(cfg.workers):
            fleet.start(slot)

        async def publish() -> None:
            # In waves, so kills land while requests are still arriving.
            async with Publisher(settings) as pub:
                waves = 10
                for w in range(waves):
                    for req in ids[w::waves]:
                        await pub.send(make_request(req, vendors[int(req.rsplit("-", 1)[1]) % len(vendors)]))
                    await pub.flush()
                    await asyncio.sleep(0.5)

        publishing = asyncio.create_task(publish())
        deadline = started + cfg.deadline_s
        next_kill = time.monotonic() + rng.uniform(*cfg.kill_every_s)
        next_token_expiry = time.monotonic() + 10
        restarted_broker = not (cfg.broker_restart and r.broker is not None)
        async with OutputReader(settings, include_jobs=False) as reader:
            while time.monotonic() < deadline:
                if publishing.done():
                    publishing.result()
                out = await reader.read()
                last = out.last_status()
                done = sum(1 for req in ids if last.get(req) in TERMINAL)
                if done == len(ids):
                    break
                now = time.monotonic()
                if not restarted_broker and done >= len(ids) * 0.4:
                    # Down past the transaction timeout: the coordinator aborts the open
                    # transactions and fences their producers (each replaced in place).
                    down_s = settings.transaction_timeout_ms / 1000 + 2
                    say(f"chaos: {done}/{len(ids)} terminal; SIGKILL the broker, restart it after {down_s:.0f} s")
                    await r.restart_broker(down_s)
                    restarted_broker = True
                kills_left = cfg.max_kills is None or fleet.kills < cfg.max_kills
                if now >= next_kill and done < len(ids) * 0.98 and kills_left:
                    slot = fleet.kill_one()
                    say(f"chaos: {done}/{len(ids)} terminal; SIGKILL worker {slot} (kill {fleet.kills})")
                    await asyncio.sleep(rng.uniform(0.3, 1.5))
                    fleet.revive_exited()
                    next_kill = time.monotonic() + rng.uniform(*cfg.kill_every_s)
                if now >= next_token_expiry:
                    for sim in sims.values():  # every token issued so far now answers 401
                        sim.tokens.clear()
                    next_token_expiry = now + 10
                fleet.revive_exited()
                await asyncio.sleep(0.5)
            await publishing
            # Let the last commits land, then read everything once more.
            out = await reader.read()
    terminal, problems, by_status = check(ids, out)
    dup_events, out_of_order, order_problems = sequence_problems(ids, out)
    dups: Duplicates = duplicates(ids, out, sims, itron_ids, r.kill_windows(), r.fleet.lives)
    problems += order_problems + dups.problems
    if any(code not in (0, -signal.SIGTERM) for code in r.exit_codes):
        problems.append(f"workers exited with {r.exit_codes} on SIGTERM")
    for slot, code in fleet.crashes:
        problems.append(f"worker {slot} died on its own (exit {code}): {fleet.last_error(slot)}")
    say(f"chaos: faults injected {r.injected()}; final statuses {by_status}")
    return ChaosResult(
        requests=len(ids),
        terminal=terminal,
        lost=len(ids) - terminal,
        duplicate_vendor_jobs=dups.vendor_jobs,
        flagged=dups.flagged,
        duplicates_by_cause=dups.by_cause,
        submits_in_flight_at_kills=dups.submits_in_flight_at_kills,
        flagged_without_duplicate=dups.flagged_without_duplicate,
        false_failed=dups.false_failed,
        duplicate_events=dup_events,
        out_of_order=out_of_order,
        kills=fleet.kills,
        broker_restarts=len(r.broker_kills),
        crashes=len(fleet.crashes),
        producers_replaced=fleet.log_count("replacing the fenced producer"),
        seconds=time.monotonic() - started,
        by_status=by_status,
        problems=problems,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=480.0)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(".chaos"))
    args = parser.parse_args()
    from worker.observability import configure_logging

    configure_logging("error", "console")
    cfg = ChaosConfig(
        requests=args.requests,
        workers=args.workers,
        seed=args.seed,
        deadline_s=args.deadline,
        broker_restart=not args.no_broker_restart,
        workdir=args.workdir,
    )
    result = asyncio.run(run_chaos(cfg, bootstrap=os.environ.get("KAFKA_BOOTSTRAP")))
    for problem in result.problems[:20]:
        print(f"  problem: {problem}")
    print(json.dumps({"seconds": round(result.seconds, 1), "broker_restarts": result.broker_restarts}))
    print(result.line())
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
