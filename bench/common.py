"""Shared plumbing for the benchmarks: a broker, simulator processes, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from confluent_kafka import Producer

from worker.config import ConnectionConfig, PolicyConfig, Settings, TopicSettings
from worker.embedded import EmbeddedKafka
from worker.kafka import producer_config
from worker.store.peek import OPEN_HEADER
from worker.testing import connections_json, eventually, spawn_worker, worker_env

WORKDIR = Path(".bench")


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    kafka = EmbeddedKafka(heap="1g")
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.close()


R = TypeVar("R")
B = TypeVar("B")


async def alternate(
    rounds: int, baseline: Callable[[int], Awaitable[B]], run: Callable[[int], Awaitable[R]]
) -> list[tuple[R, B, B]]:
    """``baseline``, ``run``, ``baseline``, ... ``rounds`` runs, each with the baseline
    runs right before and after it: a VM's speed drifts by 20-30 % over a minute or two,
    so a run is never compared with one baseline alone."""
    baselines = [await baseline(0)]
    runs = []
    for i in range(rounds):
        runs.append(await run(i))
        baselines.append(await baseline(i + 1))
    return list(zip(runs, baselines[:-1], baselines[1:], strict=True))


def median_round(rounds: Sequence[R], key: Callable[[R], float]) -> R:
    """The round whose ``key`` is the median of the rounds' (the upper one of two
    middles when the rounds are even)."""
    return sorted(rounds, key=key)[len(rounds) // 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_settings(bootstrap: str, name: str, *, partitions: int = 6, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topics": TopicSettings(partitions=partitions).prefixed(f"bench-{name}-{uuid.uuid4().hex[:6]}."),
        "group_id": f"bench-{name}-{uuid.uuid4().hex[:6]}",
        "instance_id": f"bench-{name}",
        "http_port": -1,
        "result_store_url": (WORKDIR / "results").resolve().as_uri(),
        "state_dir": (WORKDIR / "state").resolve(),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int | None = None
    log: Path | None = None  # where its output goes (appended to: earlier runs' lines come first)
    log_start: int = 0  # the log's size when it started: its own lines follow

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_all([self])


def stop_all(processes: list[Process]) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL after 30 s): a fleet stopped one
    by one hands its partitions from member to member, each restoring them, on the way."""
    running = [p.proc for p in processes if p.proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def simulator(
    vendor: str, *, stage_seconds: float, faults: dict[str, Any] | None = None, record: bool = True
) -> AsyncIterator[str]:
    """A vendor simulator in its own process (so it does not share a core's time with
    what is measured)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "worker",
        "simulate",
        vendor,
        "--port",
        str(port),
        "--stage-seconds",
        str(stage_seconds),
    ]
    for key, value in (faults or {}).items():
        args += ["--fault", f"{key}={value}"]
    if not record:
        args.append("--no-record")
    proc = Process(_spawn(args, WORKDIR / f"sim-{vendor}-{port}.log"), port)
    try:
        await wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        await asyncio.wrap_future(future)


def start_worker(
    settings: Settings, connections: dict[str, ConnectionConfig], name: str, extra_env: dict[str, str] | None = None
) -> Process:
    WORKDIR.mkdir(exist_ok=True)
    conn_file = WORKDIR / f"connections-{name}.json"
    conn_file.write_text(connections_json(connections))
    port = free_port()
    env = worker_env(
        settings, connections_file=str(conn_file.resolve()), instance_id=settings.instance_id, http_port=port
    )
    env["EXPORT_WORKER_COMMIT_INTERVAL_MS"] = str(settings.commit_interval_ms)
    env["EXPORT_WORKER_CONSUME_BATCH"] = str(settings.consume_batch)
    # Logging as `export-worker run` does by default (a line per status change): what
    # a process costs in production includes its logs.
    env["EXPORT_WORKER_LOG_LEVEL"] = "info"
    env.update(extra_env or {})
    profile = WORKDIR / f"worker-{name}.prof" if os.environ.get("BENCH_PROFILE") else None
    log = WORKDIR / f"worker-{name}.log"
    log_start = log.stat().st_size if log.exists() else 0
    return Process(spawn_worker(env, log, profile=profile), port, log, log_start)


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def wait_ready(
    worker: Process, timeout: float = 120.0, *, every_s: float = 0.05, before_poll: Callable[[], object] | None = None
) -> float:
    """Seconds until /readyz says ready (partitions assigned and restored), asking every
    ``every_s``; ``before_poll`` is called right before each time it asks."""
    assert worker.port is not None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}")
        if before_poll is not None:
            before_poll()
        with contextlib.suppress(OSError, aiohttp.ClientError):
            status, body = await scrape(worker.port, "/readyz")
            if status == 200 and "owns partitions []" not in body:
                return time.monotonic() - started
        await asyncio.sleep(every_s)
    raise TimeoutError("worker not ready")


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of an (unlabelled) histogram."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, float]:
    """(upper bound of the bucket holding quantile q, fraction at or below 1 s) of the
    observations made between two scrapes."""
    bounds = sorted(after)
    deltas = [after[b] - before.get(b, 0.0) for b in bounds]
    total = deltas[-1] if deltas else 0.0
    if total <= 0:
        return float("nan"), float("nan")
    at_or_below_1s = max((d for b, d in zip(bounds, deltas, strict=True) if b <= 1.0), default=0.0) / total
    for bound, cumulative in zip(bounds, deltas, strict=True):
        if cumulative >= q * total:
            return bound, at_or_below_1s
    return float("inf"), at_or_below_1s


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        if head.split("{")[0] == name:
            total += float(value)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (librdkafka threads are invisible to Python profilers)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def itron_conn(base_url: str, policy: PolicyConfig, **overrides: Any) -> ConnectionConfig:
    from worker.simulators.itron import demo_connection

    conn = demo_connection(base_url)
    return conn.model_copy(update={"policy": policy, **overrides})


@contextlib.asynccontextmanager
async def fleet(
    settings: Settings, connections: dict[str, ConnectionConfig], name: str, size: int
) -> AsyncIterator[list[Process]]:
    """``size`` workers of one group, each ready and owning its even share of the
    partitions (so every one of them has work from the first request); stopped at the end."""
    workers: list[Process] = []
    try:
        for i in range(size):
            member = f"{name}-{i}"
            workers.append(
                start_worker(settings.model_copy(update={"instance_id": f"bench-{member}"}), connections, member)
            )
        for worker in workers:
            await wait_ready(worker)

        async def balanced() -> bool:
            owned = [metric((await scrape(w.port))[1], "export_worker_assigned_partitions") for w in workers]  # type: ignore[arg-type]
            return owned == [settings.topics.partitions / size] * size

        await eventually(balanced, timeout=120, interval=0.5, what="partitions spread over the workers")
        yield workers
    finally:
        stop_all(workers)


def bench_main(
    measure: Callable[[str, bool], Awaitable[Any]], rows: Callable[[Any], Any], lines: Callable[[Any], Any]
) -> None:
    """``python -m bench.<name> [--quick]``: measure against a fresh broker, print the
    table rows and the ``name value target ok|miss`` lines."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with broker() as bootstrap:
        result = asyncio.run(measure(bootstrap, args.quick))
    for row in rows(result):
        print(" | ".join(row))
    print("\n".join(lines(result)))


class BenchFailed(RuntimeError):
    """The bench could not measure (the worker never became ready, records were lost)."""


# An export.jobs record as the bench writes it: (key, partition, value, its open-peek
# header as the worker writes it, ``worker.store.peek.OPEN_HEADER``).
StateRecord = tuple[bytes, int, bytes, bytes | None]


def produce(settings: Settings, records: Iterator[StateRecord]) -> tuple[int, int]:
    """Write ``records`` to export.jobs with a plain producer (not the worker's); returns
    (records, value bytes). Blocking: run it in a thread."""
    failed: list[str] = []

    def on_error(err: Any, _msg: Any) -> None:
        failed.append(str(err))

    producer = Producer(
        {
            **producer_config(settings),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "delivery.report.only.error": True,
            "on_delivery": on_error,
        }
    )
    topic = settings.topics.jobs
    count = size = 0
    for key, partition, value, head in records:
        headers = None if head is None else [(OPEN_HEADER, head)]
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        size += len(value)
        if count % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise BenchFailed(f"{left} records undelivered, {len(failed)} failed ({failed[:3]})")
    return count, size
