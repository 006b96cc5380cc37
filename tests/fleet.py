"""What the chaos run and the adversarial suite share: a broker (embedded, or
KAFKA_BOOTSTRAP), the four vendor simulators, worker processes started and killed by PID,
requests whose vendor-side job can be traced back to them, and the accounting of
vendor jobs created more than once (and why).

    async with rig(RigConfig(...)) as r:   # broker, simulators, connections file, fleet
        r.fleet.start(0)
        ...
    r.exit_codes                           # the workers' exit codes after SIGTERM
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker import simulators
from worker.config import ConnectionConfig, PolicyConfig, Settings, TopicSettings
from worker.embedded import EmbeddedKafka
from worker.output_reader import Output
from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan
from worker.testing import connections_json, spawn_worker, worker_env
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id

# A worker log line at error level or above (JSON lines, or the console renderer's).
_ERROR_LEVEL = re.compile(r'"level": ?"(error|critical)"|\[(error|critical) *\]')

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "REJECTED"})
CHAOS_POLICY = PolicyConfig(
    first_poll_s=0.3, poll_initial_s=0.3, poll_multiplier=1.5, poll_max_s=1.5,
    retry_initial_s=0.2, retry_max_s=2.0, max_failing_s=900,
    submit_settle_s=8.0,  # the simulators hold a timed-out answer for 6 s
)  # fmt: skip
CLIENT_TIMEOUT_S = 3.0  # the connections' HTTP timeout
# After its answer, a submit is still "in flight" until the worker has committed the
# vendor job id: a kill in that window leaves a committed intent without a job id.
COMMIT_GRACE_S = 2.0
# The longest a worker may hold an answer before committing it when partitions are moving
# (revoke drain 3 s, a transaction refused by the rebalance and written again).
UNCOMMITTED_S = 15.0
# No worker process calls a vendor this soon after it was spawned (imports alone take longer).
STARTUP_S = 1.0
# The longest the simulators' loop, sharing the GIL with the driver, takes to read a call.
READ_LAG_S = 2.0


# ---- requests and their vendor-side identity ---------------------------------------------


def make_request(request_id: str, vendor: str, *, tenant: str = "chaos") -> dict[str, Any]:
    """A request the simulator of ``vendor`` accepts, traceable to its vendor job."""
    job_type, job = simulators.module(vendor).sample_job()
    job = dict(job)
    if vendor == "elasticpath":
        job["job_type"] = "TAX_RUN"  # billing runs queue one per store: not what these runs measure
    if vendor == "unicommerce":
        # Unicommerce jobs carry no id of ours; a filter naming the request lets the
        # checker tell whose job the simulator created.
        job["export_filters"] = [
            *job["export_filters"],
            {"id": "displayOrderCode", "selected_values": [], "text": request_id, "date_range": None},
        ]
    return {
        "request_id": request_id,
        "tenant": tenant,
        "connection": vendor,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {"run": tenant},
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


def itron_owners(request_ids: list[str], tenant: str = "chaos") -> dict[str, str]:
    """Itron correlation id -> request id, for ``owner_of``."""
    return {correlation_id(JobSpec(r, tenant, "itron", {})): r for r in request_ids}


# ---- vendor jobs created twice, by cause ---------------------------------------------------


@dataclass
class Duplicates:
    """Vendor jobs created more than once for a request, and why."""

    vendor_jobs: int = 0  # extra jobs (n - 1 per request)
    flagged: int = 0  # extra jobs of requests announced possible_duplicate
    by_cause: dict[str, int] = field(default_factory=lambda: {"answer_lost": 0, "at_kill": 0, "other": 0})
    submits_in_flight_at_kills: int = 0
    flagged_without_duplicate: int = 0
    false_failed: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Life:
    """One worker process of the fleet (monotonic times)."""

    instance: str  # its instance id; a restart may reuse it
    started: float
    killed: float | None = None  # SIGKILLed by the driver

    def describe(self, since: float) -> str:
        killed = "not killed" if self.killed is None else f"killed at {self.killed - since:+.1f}s"
        return f"{self.instance} started at {self.started - since:+.1f}s, {killed}"


def kill_overlaps(start: float, end: float, kills: list[tuple[float, float]]) -> bool:
    return any(k_start <= end and start <= k_end for k_start, k_end in kills)


def in_flight_window(job: SimJob) -> tuple[float, float]:
    """From the submit's arrival to a little after its answer (the worker's commit)."""
    start = job.received if job.received is not None else job.created
    end = job.answered if job.answered is not None else start
    return start, end + COMMIT_GRACE_S


def cause_of(job: SimJob, kills: list[tuple[float, float]], lives: Sequence[Life] = ()) -> str:
    """Why ``job`` (not the one the worker kept) was followed by another submit."""
    start, end = in_flight_window(job)
    if job.answer_lost is not None or (end - COMMIT_GRACE_S) - start >= CLIENT_TIMEOUT_S:
        return "answer_lost"
    if kill_overlaps(start, end, kills) or caller_killed_before_commit(job, lives):
        return "at_kill"
    return "other"


def caller_life(job: SimJob, lives: Sequence[Life]) -> Life | None:
    """The worker process that made the call: the one of the instance named in the
    User-Agent that was alive when the call arrived. A process is taken to be the caller
    from ``STARTUP_S`` after its start (none calls a vendor sooner) until ``READ_LAG_S``
    after its SIGKILL: the simulators stamp a request when their loop reads it, which can
    be a little after the sender died (its bytes were already on the socket). A restart
    under the same instance id is another process."""
    if job.client is None or job.received is None:
        return None
    received = job.received
    mine = [
        life
        for life in lives
        if f"({life.instance})" in job.client
        and life.started + STARTUP_S <= received
        and (life.killed is None or received <= life.killed + READ_LAG_S)
    ]
    return max(mine, key=lambda life: life.started, default=None)


def caller_killed_before_commit(job: SimJob, lives: Sequence[Life]) -> bool:
    """The worker process that made the call was SIGKILLed before it could commit the
    answer. A job that was followed by another submit never had its id committed; a commit
    normally follows the answer within a turn, but waits out a rebalance's drain and
    retried transactions: up to ``UNCOMMITTED_S``."""
    life = caller_life(job, lives)
    if life is None or life.killed is None or job.received is None:
        return False
    answered = job.answered if job.answered is not None else job.received
    return life.killed <= answered + UNCOMMITTED_S


def duplicates(
    request_ids: list[str],
    out: Output,
    sims: dict[str, Simulator],
    itron_ids: dict[str, str],
    kills: list[tuple[float, float]],
    lives: Sequence[Life] = (),
) -> Duplicates:
    """Counts extra vendor jobs by cause, flags without a duplicate, and FAILED statuses
    the vendor does not back (the job the worker tracked did not fail, or none exists)."""
    wanted = set(request_ids)
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in out.status:
        if e["request_id"] in wanted:
            events[e["request_id"]].append(e)
    jobs: dict[str, list[SimJob]] = defaultdict(list)
    by_id: dict[str, SimJob] = {}
    result = Duplicates()
    for vendor, sim in sims.items():
        for job in sim.jobs.values():
            owner = owner_of(vendor, job, itron_ids)
            if owner in wanted:
                jobs[owner].append(job)
                by_id[job.job_id] = job
                start, end = in_flight_window(job)
                if kill_overlaps(start, end, kills):
                    result.submits_in_flight_at_kills += 1
    for r in request_ids:
        mine = sorted(jobs[r], key=lambda j: j.created)
        flagged = any(e["possible_duplicate"] for e in events[r])
        if len(mine) > 1:
            result.vendor_jobs += len(mine) - 1
            if flagged:
                result.flagged += len(mine) - 1
            else:
                result.problems.append(f"{r}: {len(mine)} vendor jobs, never flagged possible_duplicate")
            # Every job but the one the worker kept (its last vendor job id) is extra.
            kept_ids = [e["vendor_job_id"] for e in events[r] if e.get("vendor_job_id")]
            keep = next((j for j in reversed(mine) if kept_ids and j.job_id == kept_ids[-1]), mine[-1])
            for job in mine:
                if job is keep:
                    continue
                cause = cause_of(job, kills, lives)
                result.by_cause[cause] += 1
                if cause == "other":
                    start, end = in_flight_window(job)
                    at = dt.datetime.fromtimestamp(job.created_wall, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
                    life = caller_life(job, lives)
                    caller = "unknown" if life is None else life.describe(start)
                    later = [x for x in lives if x.killed is not None and x.killed >= start]
                    kills_after = [f"{x.instance}@+{(x.killed or start) - start:.1f}s" for x in later]
                    result.problems.append(
                        f"{r}: extra vendor job {job.job_id} created {at} UTC by {job.client} (in flight "
                        f"{end - start:.1f} s with the commit grace), neither answer-lost nor at a kill; "
                        f"its caller {caller}; kills after it: {kills_after[:4]}"
                    )
        elif flagged:
            result.flagged_without_duplicate += 1
        last = events[r][-1] if events[r] else None
        if last is not None and last["status"] == "FAILED":
            tracked = by_id.get(last.get("vendor_job_id") or "") or (mine[-1] if mine else None)
            if tracked is None or not tracked.fails:
                result.false_failed += 1
                error = last.get("error") or {}
                result.problems.append(
                    f"{r}: FAILED ({error.get('code')}: {str(error.get('message'))[:120]}) but its vendor job "
                    + ("never existed" if not mine else f"{[j.job_id for j in mine]} did not fail")
                )
    return result


# ---- worker processes ------------------------------------------------------------------------


class Fleet:
    """Worker processes, killed and restarted by PID; remembers when each kill happened."""

    def __init__(self, settings: Settings, conn_file: Path, logs: Path, rng: random.Random) -> None:
        self.settings = settings
        self.conn_file = conn_file
        self.logs = logs
        self.rng = rng
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self.crashes: list[tuple[int, int]] = []  # (slot, exit code) of workers that died on their own
        self.starts = 0
        self._killed: set[int] = set()  # pids this fleet stopped
        self._generation: Counter[int] = Counter()
        self.lives: list[Life] = []  # every worker process started, in order
        self._life: dict[int, Life] = {}  # each slot's current process

    def start(self, slot: int, *, log_level: str | None = None) -> None:
        # Half the restarts reuse the instance id (a StatefulSet pod), half take a new
        # one (a Deployment pod): the second kind waits for the dead one's transaction.
        if self._generation[slot] and self.rng.random() < 0.5:
            self._generation[slot] += 1
        instance = f"w{slot}-{self._generation[slot]}"
        self._generation[slot] = max(self._generation[slot], 1)
        env = worker_env(self.settings, connections_file=str(self.conn_file), instance_id=instance)
        log_level = log_level or os.environ.get("CHAOS_WORKER_LOG")  # e.g. INFO, to follow a failed run
        if log_level is not None:
            env["EXPORT_WORKER_LOG_LEVEL"] = log_level
        life = Life(instance, time.monotonic())
        self.procs[slot] = spawn_worker(env, self.logs / f"worker-{slot}.log")
        self._life[slot] = life
        self.lives.append(life)
        self.starts += 1

    @property
    def kill_times(self) -> list[float]:
        """When each SIGKILL was sent (monotonic)."""
        return [life.killed for life in self.lives if life.killed is not None]

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.poll() is None:
            self._life[slot].killed = time.monotonic()
            self._killed.add(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1

    def kill_one(self) -> int:
        slot = self.rng.choice(sorted(self.procs))
        self.kill(slot)
        return slot

    def terminate(self, slot: int, timeout: float = 60.0) -> int:
        """SIGTERM one worker and wait for it; -9 if it had to be killed."""
        proc = self.procs.pop(slot)
        self._killed.add(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return -9

    def note_crashes(self) -> None:
        for slot, proc in self.procs.items():
            code = proc.poll()
            if code is not None and proc.pid not in self._killed:
                self._killed.add(proc.pid)
                self.crashes.append((slot, code))

    def log_says(self, slot: int, text: str) -> bool:
        path = self.logs / f"worker-{slot}.log"
        return path.exists() and text in path.read_text(errors="replace")

    def last_error(self, slot: int) -> str:
        """The last error-level line of a worker's log (why it left)."""
        path = self.logs / f"worker-{slot}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        errors = [line for line in lines if _ERROR_LEVEL.search(line)]
        return errors[-1][:300] if errors else (lines[-1][:300] if lines else "")

    def log_count(self, text: str) -> int:
        """How many times ``text`` appears in the workers' logs, all slots together."""
        return sum(path.read_text(errors="replace").count(text) for path in self.logs.glob("worker-*.log"))

    def revive_exited(self) -> None:
        self.note_crashes()
        for slot, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.start(slot)

    def stop(self, timeout: float = 60.0) -> list[int]:
        self.note_crashes()
        for proc in self.procs.values():
            if proc.poll() is None:
                self._killed.add(proc.pid)
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(-9)
        return codes


# ---- the rig: broker, simulators, connections, fleet -----------------------------------------


T = TypeVar("T")


class SimulatorLoop:
    """The simulators' own event loop, on a thread: what the driver does meanwhile
    (decoding every output topic, killing and spawning processes) never delays a vendor's
    answer, which would turn into client timeouts the run would then count as bugs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="simulators", daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class RigConfig:
    name: str = "chaos"  # topic prefix, group id and log folder
    partitions: int = 6
    seed: int = 1
    workdir: Path = Path(".chaos")
    faults: dict[str, Any] = field(default_factory=dict)
    stages_s: tuple[float, ...] = (0.4, 0.4, 0.4)
    session_timeout_ms: int = 6000
    # The longest vendor Retry-After the workers honour (EXPORT_WORKER_MAX_RETRY_AFTER_S).
    max_retry_after_s: float = 600.0


@dataclass
class Rig:
    run: str
    settings: Settings
    sims: dict[str, Simulator]
    connections: dict[str, ConnectionConfig]
    logs: Path
    broker: EmbeddedKafka | None
    fleet: Fleet
    broker_kills: list[tuple[float, float]] = field(default_factory=list)  # (killed, back) monotonic
    exit_codes: list[int] = field(default_factory=list)
    stop_seconds: float = 0.0  # how long the fleet took to exit on SIGTERM

    def kill_windows(self) -> list[tuple[float, float]]:
        """Every worker kill (an instant) and broker outage, monotonic. A broker outage
        lasts, for the group, until a member whose session expired meanwhile has noticed
        (one session timeout after the broker is back) and lost its partitions."""
        session_s = self.settings.session_timeout_ms / 1000
        return [(t, t) for t in self.fleet.kill_times] + [(k, back + session_s) for k, back in self.broker_kills]

    async def restart_broker(self, down_s: float = 0.0) -> None:
        """SIGKILL the broker and start it again, ``down_s`` after the kill at the earliest."""
        assert self.broker is not None
        killed = time.monotonic()
        await asyncio.to_thread(self.broker.kill)
        await asyncio.sleep(max(0.0, killed + down_s - time.monotonic()))  # the outage itself
        await asyncio.to_thread(self.broker.start)
        self.broker_kills.append((killed, time.monotonic()))

    def injected(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for sim in self.sims.values():
            total.update(sim.faults.injected)
        return dict(total)


def rig_settings(cfg: RigConfig, bootstrap: str, run: str) -> Settings:
    """The fleet's settings: results and stores of this run under ``cfg.workdir``."""
    return Settings(
        kafka_bootstrap=bootstrap,
        topics=TopicSettings(partitions=cfg.partitions).prefixed(f"{cfg.name}{run}."),
        group_id=f"{cfg.name}-{run}",
        instance_id="driver",
        http_port=-1,
        commit_interval_ms=50,
        session_timeout_ms=cfg.session_timeout_ms,
        transaction_timeout_ms=10000,
        shutdown_grace_s=10,
        revoke_drain_s=3,
        max_retry_after_s=cfg.max_retry_after_s,
        result_store_url=(cfg.workdir / f"results-{run}").resolve().as_uri(),
        state_dir=(cfg.workdir / f"state-{run}").resolve(),
    )


@asynccontextmanager
async def rig(cfg: RigConfig, *, bootstrap: str | None = None) -> AsyncIterator[Rig]:
    """Starts a broker (unless ``bootstrap``), the four simulators with ``cfg.faults``;
    on exit SIGTERMs the fleet (exit codes in ``Rig.exit_codes``), stops the rest."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    broker: EmbeddedKafka | None = None
    sims: dict[str, Simulator] = {}
    sim_loop = SimulatorLoop()
    fleet: Fleet | None = None
    r: Rig | None = None
    try:
        if bootstrap is None:
            # CHAOS_BROKER_LOG=INFO keeps the broker's own account of a failed run.
            log_level = os.environ.get("CHAOS_BROKER_LOG", "WARN")
            broker = EmbeddedKafka(data_dir=cfg.workdir / f"kafka-{run}", log_level=log_level)
            bootstrap = await asyncio.to_thread(broker.start)
        settings = rig_settings(cfg, bootstrap, run)
        plan = FaultPlan()
        plan.update(cfg.faults)
        connections: dict[str, ConnectionConfig] = {}
        for i, vendor in enumerate(simulators.available()):
            sim = simulators.simulator_class(vendor)(
                timing=Timing(stages=cfg.stages_s), faults=FaultPlan(**plan.as_dict()), seed=cfg.seed + i
            )
            await sim_loop.run(sim.start())
            sims[vendor] = sim
            connections[vendor] = (
                simulators.module(vendor)
                .demo_connection(sim.base_url)
                .model_copy(
                    update={
                        "policy": CHAOS_POLICY,
                        "timeout_s": CLIENT_TIMEOUT_S,
                        "rate_per_s": 500.0,
                        "max_concurrency": 64,
                    }
                )
            )
        conn_file = cfg.workdir / f"connections-{run}.json"
        conn_file.write_text(connections_json(connections))
        logs = cfg.workdir / f"logs-{run}"
        logs.mkdir(exist_ok=True)
        fleet = Fleet(settings, conn_file, logs, random.Random(cfg.seed))
        r = Rig(run, settings, sims, connections, logs, broker, fleet)
        yield r
    finally:
        if fleet is not None:
            stopping = time.monotonic()
            codes = await asyncio.to_thread(fleet.stop)  # the simulators keep answering meanwhile
            if r is not None:
                r.exit_codes, r.stop_seconds = codes, time.monotonic() - stopping
        for sim in sims.values():
            await sim_loop.run(sim.stop())
        sim_loop.close()
        if broker is not None:
            broker.close()


def sequence_problems(request_ids: list[str], out: Output) -> tuple[int, int, list[str]]:
    """(duplicate events, requests with out-of-order sequences, problems): every status
    sequence must be 1, 2, 3 ... and every original FileReady announced once."""
    wanted = set(request_ids)
    problems: list[str] = []
    seen: Counter[tuple[str, int]] = Counter((e["request_id"], e["sequence"]) for e in out.status)
    duplicate_events = sum(n - 1 for (r, _), n in seen.items() if n > 1 and r in wanted)
    originals = Counter(f["request_id"] for f in out.files if not f["reannounced"] and f["request_id"] in wanted)
    duplicate_events += sum(n - 1 for n in originals.values() if n > 1)
    events: dict[str, list[int]] = defaultdict(list)
    for e in out.status:
        if e["request_id"] in wanted:
            events[e["request_id"]].append(e["sequence"])
    out_of_order = 0
    for r in request_ids:
        seqs = events[r]
        if seqs != list(range(1, len(seqs) + 1)):
            out_of_order += 1
            problems.append(f"{r}: sequences {seqs[:20]}")
    return duplicate_events, out_of_order, problems
