"""Chaos run: N requests over all four vendors, several worker processes, simulators
injecting faults, a driver that SIGKILLs a random worker every few seconds (and the
broker once), and an independent checker reading every topic with read_committed.

    python -m tests.chaos [--requests 2000] [--workers 3] [--seed 1]     (make chaos)

Ends with one line:
    chaos: requests=N terminal=N lost=0 duplicate_vendor_jobs=D flagged=F duplicate_events=0 out_of_order=0 kills=K
and exits non-zero when a target is missed (lost, duplicate_events and out_of_order
must be 0; every vendor job created twice must be announced with possible_duplicate).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker import simulators
from worker.config import ConnectionConfig, PolicyConfig, Settings, TopicSettings
from worker.embedded import EmbeddedKafka
from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan
from worker.testing import Output, OutputReader, Publisher, connections_json, spawn_worker, worker_env
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "REJECTED"})
CHAOS_POLICY = PolicyConfig(
    first_poll_s=0.3, poll_initial_s=0.3, poll_multiplier=1.5, poll_max_s=1.5,
    retry_initial_s=0.2, retry_max_s=2.0, max_failing_s=900,
    submit_settle_s=8.0,  # the simulators hold a timed-out answer for 6 s
)  # fmt: skip


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
    duplicate_events: int
    out_of_order: int
    kills: int
    broker_restarts: int
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
        )

    def line(self) -> str:
        return (
            f"chaos: requests={self.requests} terminal={self.terminal} lost={self.lost} "
            f"duplicate_vendor_jobs={self.duplicate_vendor_jobs} flagged={self.flagged} "
            f"duplicate_events={self.duplicate_events} out_of_order={self.out_of_order} kills={self.kills}"
        )


# ---- requests and their vendor-side identity ---------------------------------------------


def make_request(request_id: str, vendor: str) -> dict[str, Any]:
    job_type, job = simulators.module(vendor).sample_job()
    job = dict(job)
    if vendor == "elasticpath":
        job["job_type"] = "TAX_RUN"  # billing runs queue one per store: not what this run measures
    if vendor == "unicommerce":
        # Unicommerce jobs carry no id of ours; a filter naming the request lets the
        # checker tell whose job the simulator created.
        job["export_filters"] = [
            *job["export_filters"],
            {"id": "displayOrderCode", "selected_values": [], "text": request_id, "date_range": None},
        ]
    return {
        "request_id": request_id,
        "tenant": "chaos",
        "connection": vendor,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {"run": "chaos"},
        "job": (job_type, job),
        "replay_of": None,
    }


def owner_of(vendor: str, job: SimJob, itron_ids: dict[str, str]) -> str | None:
    """The request id a simulated vendor job was created for."""
    if vendor == "itron":
        return itron_ids.get(job.match_key)
    if vendor == "elasticpath":
        return job.match_key or None
    if vendor == "opengate":
        return job.match_key.removeprefix("export-worker:") or None
    if vendor == "unicommerce":
        for item in job.body.get("exportFilters", []):
            if item.get("id") == "displayOrderCode":
                return str(item.get("text"))
    return None


# ---- the checker ---------------------------------------------------------------------------


def check(
    ids: list[str], out: Output, sims: dict[str, Simulator], itron_ids: dict[str, str]
) -> tuple[int, int, int, int, int, list[str], dict[str, int]]:
    problems: list[str] = []
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in out.status:
        events[e["request_id"]].append(e)
    seen: Counter[tuple[str, int]] = Counter((e["request_id"], e["sequence"]) for e in out.status)
    duplicate_events = sum(n - 1 for n in seen.values() if n > 1)
    originals = Counter(f["request_id"] for f in out.files if not f["reannounced"])
    duplicate_events += sum(n - 1 for n in originals.values() if n > 1)
    out_of_order = 0
    terminal = 0
    by_status: Counter[str] = Counter()
    for r in ids:
        seqs = [e["sequence"] for e in events[r]]
        if seqs != list(range(1, len(seqs) + 1)):
            out_of_order += 1
            problems.append(f"{r}: sequences {seqs}")
        last = events[r][-1]["status"] if events[r] else None
        by_status[last or "NONE"] += 1
        if last in TERMINAL:
            terminal += 1
            if last == "SUCCEEDED" and originals[r] != 1:
                problems.append(f"{r}: SUCCEEDED with {originals[r]} FileReady")
        else:
            problems.append(f"{r}: not terminal (last {last})")
    jobs: Counter[str] = Counter()
    for vendor, sim in sims.items():
        for job in sim.jobs.values():
            owner = owner_of(vendor, job, itron_ids)
            if owner is not None:
                jobs[owner] += 1
    duplicate_jobs = 0
    flagged = 0
    for r, n in jobs.items():
        if n > 1:
            duplicate_jobs += n - 1
            if any(e["possible_duplicate"] for e in events[r]):
                flagged += n - 1
            else:
                problems.append(f"{r}: {n} vendor jobs, never flagged possible_duplicate")
    return terminal, duplicate_jobs, flagged, duplicate_events, out_of_order, problems, dict(by_status)


# ---- the driver ----------------------------------------------------------------------------


class Fleet:
    """Worker processes, killed and restarted by PID."""

    def __init__(self, settings: Settings, conn_file: Path, logs: Path, rng: random.Random) -> None:
        self.settings = settings
        self.conn_file = conn_file
        self.logs = logs
        self.rng = rng
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self._generation: Counter[int] = Counter()

    def start(self, slot: int) -> None:
        # Half the restarts reuse the instance id (a StatefulSet pod), half take a new
        # one (a Deployment pod): the second kind waits for the dead one's transaction.
        if self._generation[slot] and self.rng.random() < 0.5:
            self._generation[slot] += 1
        instance = f"w{slot}-{self._generation[slot]}"
        self._generation[slot] = max(self._generation[slot], 1)
        env = worker_env(self.settings, connections_file=str(self.conn_file), instance_id=instance)
        self.procs[slot] = spawn_worker(env, self.logs / f"worker-{slot}.log")

    def kill_one(self) -> int:
        slot = self.rng.choice(sorted(self.procs))
        proc = self.procs[slot]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1
        return slot

    def revive_exited(self) -> None:
        for slot, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.start(slot)

    def stop(self) -> list[int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(-9)
        return codes


async def run_chaos(cfg: ChaosConfig, *, bootstrap: str | None = None, say: Any = print) -> ChaosResult:
    rng = random.Random(cfg.seed)
    started = time.monotonic()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    broker: EmbeddedKafka | None = None
    if bootstrap is None:
        # CHAOS_BROKER_LOG=INFO keeps the broker's own account of a failed run.
        log_level = os.environ.get("CHAOS_BROKER_LOG", "WARN")
        broker = EmbeddedKafka(data_dir=cfg.workdir / f"kafka-{run}", log_level=log_level)
        bootstrap = await asyncio.to_thread(broker.start)
    topics = TopicSettings(partitions=cfg.partitions).prefixed(f"chaos{run}.")
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topics=topics,
        group_id=f"chaos-{run}",
        instance_id="driver",
        http_port=-1,
        commit_interval_ms=50,
        session_timeout_ms=6000,
        transaction_timeout_ms=10000,
        shutdown_grace_s=10,
        revoke_drain_s=3,
        result_store_url=(cfg.workdir / f"results-{run}").resolve().as_uri(),
    )
    plan = FaultPlan()
    plan.update(cfg.faults)
    sims: dict[str, Simulator] = {}
    connections: dict[str, ConnectionConfig] = {}
    for i, vendor in enumerate(simulators.available()):
        sim = simulators.simulator_class(vendor)(
            timing=Timing(stages=cfg.stages_s), faults=FaultPlan(**plan.as_dict()), seed=cfg.seed + i
        )
        await sim.start()
        sims[vendor] = sim
        connections[vendor] = (
            simulators.module(vendor)
            .demo_connection(sim.base_url)
            .model_copy(update={"policy": CHAOS_POLICY, "timeout_s": 3.0, "rate_per_s": 500.0, "max_concurrency": 64})
        )
    conn_file = cfg.workdir / f"connections-{run}.json"
    conn_file.write_text(connections_json(connections))
    logs = cfg.workdir / f"logs-{run}"
    logs.mkdir(exist_ok=True)
    fleet = Fleet(settings, conn_file, logs, rng)
    vendors = sorted(sims)
    ids = [f"c{run}-{i:05d}" for i in range(cfg.requests)]
    itron_ids = {correlation_id(JobSpec(r, "chaos", "itron", {})): r for r in ids}
    broker_restarts = 0
    say(f"chaos: {cfg.requests} requests over {', '.join(vendors)}; {cfg.workers} workers; logs in {logs}")
    try:
        for slot in range(cfg.workers):
            fleet.start(slot)

        async def publish() -> None:
            # In waves, so kills land while requests are still arriving.
            async with Publisher(settings) as pub:
                waves = 10
                for w in range(waves):
                    for r in ids[w::waves]:
                        await pub.send(make_request(r, vendors[int(r.rsplit("-", 1)[1]) % len(vendors)]))
                    await pub.flush()
                    await asyncio.sleep(0.5)

        publishing = asyncio.create_task(publish())
        deadline = started + cfg.deadline_s
        next_kill = time.monotonic() + rng.uniform(*cfg.kill_every_s)
        next_token_expiry = time.monotonic() + 10
        restarted_broker = not (cfg.broker_restart and broker is not None)
        async with OutputReader(settings, include_jobs=False) as reader:
            while time.monotonic() < deadline:
                if publishing.done():
                    publishing.result()
                out = await reader.read()
                last = out.last_status()
                done = sum(1 for r in ids if last.get(r) in TERMINAL)
                if done == len(ids):
                    break
                now = time.monotonic()
                if not restarted_broker and done >= len(ids) * 0.4 and broker is not None:
                    say(f"chaos: {done}/{len(ids)} terminal; SIGKILL the broker and restart it")
                    await asyncio.to_thread(broker.kill)
                    await asyncio.to_thread(broker.start)
                    broker_restarts += 1
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
    finally:
        codes = await asyncio.to_thread(fleet.stop)  # the simulators keep answering meanwhile
        for sim in sims.values():
            await sim.stop()
        if broker is not None:
            broker.close()
    terminal, dup_jobs, flagged, dup_events, out_of_order, problems, by_status = check(ids, out, sims, itron_ids)
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        problems.append(f"workers exited with {codes} on SIGTERM")
    injected: Counter[str] = Counter()
    for sim in sims.values():
        injected.update(sim.faults.injected)
    say(f"chaos: faults injected {dict(injected)}; final statuses {by_status}")
    return ChaosResult(
        requests=len(ids),
        terminal=terminal,
        lost=len(ids) - terminal,
        duplicate_vendor_jobs=dup_jobs,
        flagged=flagged,
        duplicate_events=dup_events,
        out_of_order=out_of_order,
        kills=fleet.kills,
        broker_restarts=broker_restarts,
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
    args = parser.parse_args()
    from worker.observability import configure_logging

    configure_logging("error", "console")
    cfg = ChaosConfig(
        requests=args.requests,
        workers=args.workers,
        seed=args.seed,
        deadline_s=args.deadline,
        broker_restart=not args.no_broker_restart,
    )
    import os

    result = asyncio.run(run_chaos(cfg, bootstrap=os.environ.get("KAFKA_BOOTSTRAP")))
    for problem in result.problems[:20]:
        print(f"  problem: {problem}")
    print(json.dumps({"seconds": round(result.seconds, 1), "broker_restarts": result.broker_restarts}))
    print(result.line())
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
