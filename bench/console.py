"""Console page loads with 100,000 jobs in export.jobs (and a few thousand status events
and dead letters): each page's p50/p95 over repeated loads, against a raw aiohttp
handler answering a page of the same size from memory on the same machine (the floor
of any page), and how fast the console's index reads the topics at start."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from confluent_kafka.aio import AIOProducer

from bench.common import bench_settings
from bench.restore import JOB, write_states
from worker.codec import Codec
from worker.console.app import ConsoleOptions, serve
from worker.engine.model import JobState, Phase, Status
from worker.kafka import ensure_topics, producer_config
from worker.records import dead_letter_record
from worker.testing import eventually, local_app

TARGET_MS = 300.0
LOADS = 30
DEAD_LETTERS = 2_000
VENDORS = ("itron", "opengate", "elasticpath", "unicommerce")
OPEN = (Status.ACCEPTED, Status.SUBMITTED, Status.QUEUED, Status.RUNNING)
DONE = (Status.SUCCEEDED, Status.FAILED, Status.REJECTED)


def varied_state(i: int, now: int, partitions: int) -> JobState:
    """Job ``i`` of a busy fleet: four vendors, 40 tenants, a third still open."""
    status = OPEN[i % 4] if i % 3 == 0 else DONE[i % 3]
    phase = Phase.ACTIVE if status in OPEN else Phase.DONE
    vendor = VENDORS[i % 4]
    return JobState(
        request_id=f"job-{i:07d}", tenant=f"tenant-{i % 40}", connection=f"{vendor}-{i % 3}", vendor=vendor,
        job_json=JOB, requested_at_ms=now - i, origin_partition=i % partitions, origin_offset=i, phase=phase,
        status=status, sequence=4, created_at_ms=now - i, updated_at_ms=now - i, vendor_status="Running",
        vendor_job_id=f"{i:08d}-0000-4000-8000-000000000000", submit_attempt=1,
    )  # fmt: skip


@dataclass
class PageTimes:
    path: str
    p50_ms: float
    p95_ms: float
    bytes: int


@dataclass
class ConsoleBench:
    jobs: int
    index_s: float  # console start -> every partition read to its end
    pages: list[PageTimes]
    raw_p50_ms: float  # the same-size page from memory, raw aiohttp
    raw_p95_ms: float

    @property
    def worst_p95_ms(self) -> float:
        return max(p.p95_ms for p in self.pages)


async def write_dead_letters(topic: str, producer: AIOProducer, n: int, requests: str) -> None:
    codec = Codec()
    now = int(time.time() * 1000)
    for i in range(n):
        record = dead_letter_record(
            topic=requests, partition=i % 6, offset=i, timestamp_ms=now, key=f"bad-{i}".encode(),
            value=b"not avro", headers=None, reason_code=("not_avro", "unknown_connection", "invalid_request")[i % 3],
            reason="the record is not Avro of our schemas", failed_at_ms=now, request_id=None, worker="bench",
        )  # fmt: skip
        await producer.produce(topic, value=codec.encode("DeadLetter", record), key=f"bad-{i}".encode())


async def load(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - started) * 1000, len(body)


async def times(session: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    samples, size = [], 0
    for _ in range(LOADS):
        ms, size = await load(session, url)
        samples.append(ms)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], size


async def raw_floor(size: int) -> tuple[float, float]:
    """A raw aiohttp handler answering ``size`` bytes of HTML from memory."""
    body = b"x" * size

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    async with local_app(app, access_log=None) as port, aiohttp.ClientSession() as session:
        p50, p95, _ = await times(session, f"http://127.0.0.1:{port}/")
    return p50, p95


async def measure(bootstrap: str, jobs: int = 100_000) -> ConsoleBench:
    settings = bench_settings(bootstrap, "console")
    await ensure_topics(settings)
    await write_states(settings, jobs, varied_state)
    producer = AIOProducer({**producer_config(settings), "linger.ms": 20}, batch_size=5000, buffer_timeout=0.1)
    await write_dead_letters(settings.topics.dlq, producer, DEAD_LETTERS, settings.topics.requests)
    await producer.flush()
    await producer.close()

    started = time.monotonic()
    async with serve(settings, ConsoleOptions(port=0)) as (console, url):
        await eventually(lambda: console.follower.progress.caught_up, timeout=300, interval=0.02, what="index")
        index_s = time.monotonic() - started
        pages = [
            "/fleet",
            "/fleet?fragment=1",
            "/jobs",
            "/jobs?vendor=opengate&status=SUBMITTED",
            "/jobs?tenant=tenant-7&since=-1h",
            "/jobs?request_id=job-00042",
            f"/jobs?before={int(time.time() * 1000) - jobs // 2}:job-0050000",
            "/jobs/job-0004242",
            "/dead-letters",
            "/dead-letters?reason=not_avro",
            "/pauses",
        ]
        measured = []
        async with aiohttp.ClientSession() as session:
            for path in pages:
                await load(session, url + path)  # warm: templates compiled, SQLite pages cached
                p50, p95, size = await times(session, url + path)
                measured.append(PageTimes(path, p50, p95, size))
    largest = max(measured, key=lambda p: p.bytes)
    raw_p50, raw_p95 = await raw_floor(largest.bytes)
    return ConsoleBench(jobs, index_s, measured, raw_p50, raw_p95)


def rows(b: ConsoleBench) -> list[tuple[str, str, str, str, str]]:
    out = [
        (
            f"console index of {b.jobs} jobs + {DEAD_LETTERS} dead letters",
            f"{b.index_s:.1f} s to read the topics ({b.jobs / b.index_s:.0f} jobs/s)",
            "-",
            "-",
            "info",
        )
    ]
    for page in b.pages:
        out.append(
            (
                f"console page {page.path}",
                f"p50 {page.p50_ms:.1f} ms, p95 {page.p95_ms:.1f} ms ({page.bytes // 1024} KiB)",
                f"raw aiohttp p95 {b.raw_p95_ms:.1f} ms",
                f"{page.p95_ms / max(b.raw_p95_ms, 0.01):.1f}",
                f"p95 < {TARGET_MS:.0f} ms",
            )
        )
    return out


def lines(b: ConsoleBench) -> list[str]:
    worst = max(b.pages, key=lambda p: p.p95_ms)
    ok = "ok" if worst.p95_ms < TARGET_MS else "miss"
    return [
        f"console_worst_page_p95_ms {worst.p95_ms:.1f} <{TARGET_MS:.0f} {ok}",
        f"console_index_jobs_per_s {b.jobs / b.index_s:.0f} info ok",
    ]


if __name__ == "__main__":
    import sys

    from bench.common import broker
    from worker.observability import configure_logging

    configure_logging("error", "console")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with broker() as bootstrap:
        result = asyncio.run(measure(bootstrap, n))
    for row in rows(result):
        print(" | ".join(row))
    print("\n".join(lines(result)))
