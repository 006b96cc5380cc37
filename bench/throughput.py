"""End-to-end throughput: requests/s from export.requests to FileReady with simulators
answering instantly, one worker process, against the raw pipeline baseline. Both are
timed from their first request read to their last output; the worker's time from
/readyz to that first read is reported apart.

The worker and the raw pipeline take turns, ``ROUNDS`` times (raw, worker, raw, worker,
..., raw): each worker run is compared with the raw runs either side of it, and the
figures are the median of those rounds, with their range. One round moved by up to a
third between runs on the bench VM (its speed drifts over a minute or two)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.aio import AIOConsumer

from bench.common import (
    WORKDIR,
    alternate,
    bench_settings,
    cpu_seconds,
    create_topic,
    itron_conn,
    median_round,
    scrape,
    simulator,
    start_worker,
    thread_cpu,
    wait_ready,
)
from worker.config import PolicyConfig, Settings
from worker.kafka import admin_client, base_config, ensure_topics
from worker.testing import OtlpReceiver, OutputReader, Publisher, itron_request

POLICY = PolicyConfig(first_poll_s=0.0, poll_initial_s=0.05, poll_max_s=0.5, jitter=0.0)
CONCURRENCY = 128
# The second traced run samples this fraction of the exports (parentbased_traceidratio):
# how tracing is run at volume.
SAMPLED_FRACTION = 0.1
# Kafka records the worker writes per request here (three status events and a FileReady,
# each with its job's state record), and so the raw pipeline too.
RECORDS_PER_REQUEST = 8
ROUNDS = 3  # odd: the median is one of the rounds
# Requests a run against the raw pipeline. The worker's first FileReady is durable about
# 0.5 s after its first read (its submits wait for a transaction, its FileReady for the
# next), a third of the raw pipeline's 5,000-request run on a fast spell: at 10,000 the
# ratio tells more of the pace the worker keeps (alternating runs of the same code read
# a median 0.56 at 5,000 and 0.66 at 10,000).
REQUESTS = 10_000


@dataclass
class Round:
    """One untraced worker run and the raw pipeline's runs right before and after it."""

    worker_rps: float
    worker_cpu_ms: float  # CPU per request
    raw_rps: float  # the two raw runs together
    raw_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.worker_rps / self.raw_rps

    @property
    def cpu_ratio(self) -> float:
        return self.worker_cpu_ms / self.raw_cpu_ms


@dataclass
class Throughput:
    requests: int  # a run against the raw pipeline
    traced_requests: int  # a traced run and each untraced run beside it
    rounds: list[Round]
    records_per_request: float
    traced: TracedRound  # every export traced, spans sent over OTLP/HTTP
    sampled: TracedRound  # SAMPLED_FRACTION of the exports traced
    first_read_s: float  # the rounds' workers' /readyz to their first request read (the longest; see WorkerRun)

    @property
    def by_throughput(self) -> Round:
        """The round of the median throughput ratio: the throughput row's figures."""
        return median_round(self.rounds, lambda r: r.ratio)

    @property
    def by_cpu(self) -> Round:
        """The round of the median CPU ratio: the CPU row's figures."""
        return median_round(self.rounds, lambda r: r.cpu_ratio)


@dataclass
class WorkerRun:
    rps: float
    cpu_ms: float
    written: float  # records per request
    first_read_s: float  # the last /readyz poll that found it not ready to its first read (as logged)


@dataclass
class TracedRound:
    """A worker run with tracing on and the untraced runs right before and after it."""

    traced: WorkerRun
    before: WorkerRun
    after: WorkerRun

    @property
    def untraced_rps(self) -> float:
        """The two untraced runs together (the same number of requests each)."""
        return 2 / (1 / self.before.rps + 1 / self.after.rps)

    @property
    def ratio(self) -> float:
        return self.traced.rps / self.untraced_rps


def first_read_at(log_path: Path, log_start: int) -> float:
    """When a worker read its first request (``time.time()``), from its log: its own lines
    start at byte ``log_start`` (the file is appended to, run after run).

    The first request is stepped, and its ACCEPTED status logged, in the loop turn that
    read it: that line is when the worker read its first request, which is what the raw
    pipeline's clock starts at. It is not seen from outside while the worker runs: its
    /metrics is served by the same event loop that takes the first batches in, and a
    scrape answered after them started the clock up to 0.15 s late, in the worker's
    favour (and took loop time from it)."""
    with log_path.open("rb") as log:
        log.seek(log_start)
        for line in log:
            if b'"status"' not in line:
                continue
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if not isinstance(fields, dict):
                continue
            stamp = fields.get("timestamp")
            if fields.get("event") == "status" and isinstance(stamp, str):
                return datetime.fromisoformat(stamp).timestamp()
    raise RuntimeError(f"no status event in {log_path}: the worker logs one per status change at level info")


class BeforeReady:
    """The worker's wall time and CPU seconds sampled right before each /readyz poll, the
    last two kept: the one before the poll that found it ready was taken before a poll
    that did not, so before its first read, and within one poll of its readiness."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._samples: deque[tuple[float, float]] = deque(maxlen=2)

    def sample(self) -> None:
        self._samples.append((time.time(), cpu_seconds(self._pid)))

    @property
    def last(self) -> tuple[float, float]:
        """(wall time, CPU seconds) before the last poll that found it not ready (or, if
        the first poll found it ready, before that one)."""
        return self._samples[0]


async def publish_requests(settings: Settings, n: int) -> None:
    """``n`` Itron requests on the settings' request topic (made if missing)."""
    await ensure_topics(settings, admin_client(settings))
    async with Publisher(settings) as pub:
        for i in range(n):
            await pub.send(itron_request(f"t-{i}"))
        await pub.flush()


class CommittedCount:
    """Counts the committed records of one topic (read_committed), without decoding them:
    how a run's end is seen while it is timed. The raw pipeline times itself, with no
    reader beside it; a reader that decoded the worker's four output records a request
    would take the same two cores from the worker and the broker."""

    def __init__(self, settings: Settings, topic: str) -> None:
        conf = {
            **base_config(settings),
            "group.id": "bench-count",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        self._consumer = AIOConsumer(conf, max_workers=1)
        self._topic = topic
        self._partitions = settings.topics.partitions
        self.count = 0

    async def __aenter__(self) -> CommittedCount:
        await self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in range(self._partitions)])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._consumer.close()

    async def reach(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {n} records on {self._topic} within {timeout:.0f} s")
            # No more than are missing: consume() returns when it has that many (or at
            # the timeout), so the last record ends the wait as it arrives.
            for msg in await self._consumer.consume(num_messages=min(5000, n - self.count), timeout=0.2):
                if (err := msg.error()) is not None:
                    raise RuntimeError(f"reading {self._topic}: {err.str()}")
                self.count += 1


async def run_worker(bootstrap: str, n: int, sim_url: str, name: str, env: dict[str, str] | None = None) -> WorkerRun:
    """One worker process working off ``n`` requests published before it starts."""
    settings = bench_settings(bootstrap, name)
    await publish_requests(settings, n)
    conn = itron_conn(sim_url, POLICY, rate_per_s=10_000.0, max_concurrency=CONCURRENCY)
    worker = start_worker(settings, {"itron": conn}, name, env)
    try:
        async with CommittedCount(settings, settings.topics.files) as files:
            # Polled often, and sampled before each poll: /readyz is served by the loop
            # that starts reading as soon as it is ready, so a sample taken once it says
            # so may already count some of the run's work. The CPU it spends from the
            # sample to its first read counts against it.
            before = BeforeReady(worker.pid)
            await wait_ready(worker, every_s=0.01, before_poll=before.sample)
            ready, cpu0 = before.last
            await files.reach(n, timeout=600)  # every request's FileReady committed
            ended = time.time()
            worker_cpu = cpu_seconds(worker.pid) - cpu0
        if os.environ.get("BENCH_DEBUG"):
            print(sorted(thread_cpu(worker.pid).items(), key=lambda kv: -kv[1])[:12])
        # What the run wrote, read once it is timed.
        async with OutputReader(settings, include_jobs=False) as reader:
            # Each topic is read at its own pace: wait for the status events too.
            expected = RECORDS_PER_REQUEST // 2 * n  # events; each comes with a state record
            try:
                out = await reader.wait_for(lambda o: len(o.status) + len(o.files) >= expected, timeout=60)
            except TimeoutError:
                out = await reader.read()  # fewer than the raw pipeline writes: the caller says so
        if os.environ.get("BENCH_DEBUG"):
            assert worker.port is not None
            _, text = await scrape(worker.port)
            print(
                "\n".join(
                    row
                    for row in text.splitlines()
                    if ("commit" in row or "vendor_calls_total" in row or "requests_total" in row)
                    and "bucket" not in row
                )
            )
    finally:
        # Off the loop: stopping waits for the process, and the OTLP receiver of a traced
        # run answers on this loop, so the spans the worker sends as it stops would wait
        # on the wait (and be dropped after its flush bound).
        await asyncio.to_thread(worker.stop)
    # Timed from its first request read, as the raw pipeline is; how long that took after
    # /readyz is reported apart.
    assert worker.log is not None
    started = first_read_at(worker.log, worker.log_start)
    written = (len(out.status) + len(out.files)) * 2 / n  # each event comes with a state record
    return WorkerRun(n / (ended - started), worker_cpu / n * 1000, written, started - ready)


async def run_raw(bootstrap: str, n: int, sim_url: str, name: str, per_request: int) -> tuple[float, float]:
    """The raw pipeline over ``n`` requests published before it starts: (seconds from its
    first request read to its last output, CPU seconds)."""
    settings = bench_settings(bootstrap, name)
    await publish_requests(settings, n)
    out_topic = f"{settings.topics.requests}.raw-out"
    await create_topic(bootstrap, out_topic, settings.topics.partitions)
    raw = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.raw_pipeline", bootstrap, settings.topics.requests,
         out_topic, str(n), sim_url, str(CONCURRENCY), str(per_request)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    seconds, cpu = (float(x) for x in raw.stdout.strip().splitlines()[-1].split())
    return seconds, cpu


async def measure(bootstrap: str, n: int = REQUESTS, rounds: int = ROUNDS) -> Throughput:
    """``n`` requests a run for the rounds against the raw pipeline, half as many for the
    traced runs and the untraced runs beside them (a traced run takes twice as long)."""
    traced_n = n // 2
    async with simulator("itron", stage_seconds=0.0) as sim_url:

        async def raw(i: int) -> tuple[float, float]:
            return await run_raw(bootstrap, n, sim_url, f"tput-raw-{i}", RECORDS_PER_REQUEST)

        async def untraced(name: str, requests: int = n) -> WorkerRun:
            run = await run_worker(bootstrap, requests, sim_url, name)
            if round(run.written) != RECORDS_PER_REQUEST:
                raise RuntimeError(
                    f"the worker wrote {run.written:.2f} records per request and the raw pipeline "
                    f"{RECORDS_PER_REQUEST}: make them the same (RECORDS_PER_REQUEST)"
                )
            return run

        async def plain(i: int) -> WorkerRun:
            return await untraced(f"tput-{i}")

        plains = await alternate(rounds, raw, plain)
        async with OtlpReceiver(decode=False) as collector:
            otlp = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url,
                "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
            }
            ratio = str(SAMPLED_FRACTION)
            samplers = [
                ("traced", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}),  # whatever the shell says
                ("sampled", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio}),
            ]

            async def beside(i: int) -> WorkerRun:
                return await untraced(f"tput-untraced-{i}", traced_n)

            async def traced(i: int) -> WorkerRun:
                name, sampler = samplers[i]
                sent = collector.requests
                run = await run_worker(bootstrap, traced_n, sim_url, f"tput-{name}", otlp | sampler)
                if collector.requests == sent:
                    raise RuntimeError(f"the {name} worker sent no spans")
                return run

            # Each traced run between two untraced ones, as the rounds above: compared with
            # a run minutes earlier its ratio would be as much the VM's drift as tracing's cost.
            every, sampled = (TracedRound(*runs) for runs in await alternate(len(samplers), beside, traced))
    measured = [
        Round(w.rps, w.cpu_ms, 2 * n / (before[0] + after[0]), (before[1] + after[1]) / (2 * n) * 1000)
        for w, before, after in plains
    ]
    return Throughput(
        n,
        traced_n,
        measured,
        statistics.median(w.written for w, _, _ in plains),
        every,
        sampled,
        max(w.first_read_s for w, _, _ in plains),
    )


if __name__ == "__main__":
    from bench.common import broker

    WORKDIR.mkdir(exist_ok=True)
    with broker() as bootstrap:
        result = asyncio.run(measure(bootstrap, int(sys.argv[1]) if len(sys.argv) > 1 else REQUESTS))
    print(
        result,
        f"ratio={result.by_throughput.ratio:.2f} cpu_ratio={result.by_cpu.cpu_ratio:.2f}",
        f"tracing_ratio={result.traced.ratio:.2f}",
        f"sampled_tracing_ratio={result.sampled.ratio:.2f}",
    )
