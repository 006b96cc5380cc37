"""The side port of a running worker: /healthz, /readyz and /metrics (Prometheus text).

Readiness follows the worker's life: not ready while the assigned partitions are being
restored, ready once they are, not ready again while it drains at shutdown. The metrics
are read the way Prometheus reads them (the text exposition, parsed) and compared with
what the worker visibly did: events on the output topics, jobs the simulator created.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from confluent_kafka.aio import AIOProducer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import itron_connection, make_settings, running
from worker.config import Settings, TopicSettings
from worker.kafka import ensure_topics, producer_config
from worker.observability import LATENCY_BUCKETS
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal


class HeldItron(ItronSimulator):
    """The Itron simulator, whose polls can be held unanswered until the test lets them
    go: a vendor call stays in flight exactly as long as the test needs it to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.holding = False
        self.parked = 0  # polls that arrived while holding
        self.release = asyncio.Event()

    async def poll(self, request: web.Request) -> web.Response:
        if self.holding:
            self.parked += 1
            await self.release.wait()
        return await super().poll(request)

    def hold(self) -> None:
        self.holding = True
        self.release.clear()

    def let_go(self) -> None:
        self.holding = False
        self.release.set()


async def fetch(session: aiohttp.ClientSession, worker: Worker, path: str) -> tuple[int, str, str]:
    """(status, body, content type) of ``GET path`` on the worker's side port."""
    assert worker.side_port is not None and worker.side_port.port
    async with session.get(f"http://127.0.0.1:{worker.side_port.port}{path}") as response:
        return response.status, await response.text(), response.headers.get("Content-Type", "")


async def readyz(session: aiohttp.ClientSession, worker: Worker) -> tuple[int, dict[str, Any]]:
    assert worker.side_port is not None and worker.side_port.port
    async with session.get(f"http://127.0.0.1:{worker.side_port.port}/readyz") as response:
        return response.status, await response.json()


def samples(exposition: str, name: str, **labels: str) -> list[Sample]:
    """Every sample called ``name`` whose labels include ``labels``."""
    return [
        s
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when there is none, as Prometheus would read a
    counter that has not been touched yet)."""
    return sum(s.value for s in samples(exposition, name, **labels))


def family_names(exposition: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(exposition)}


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def side_port_settings(bootstrap: str, topics: TopicSettings, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(bootstrap, topics, tmp_path, http_port=0, http_host="127.0.0.1", **overrides)


class TestReadiness:
    async def test_readyz_is_503_until_the_partitions_are_restored_then_200(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path, itron_sim: Any
    ) -> None:
        """A transaction a previous owner left open on export.jobs holds the restore (and
        readiness) back; once it ends, the worker restores and says it is ready."""
        settings = side_port_settings(kafka_bootstrap, topics, tmp_path, transaction_timeout_ms=30_000)
        await ensure_topics(settings)
        ghost = AIOProducer(producer_config(settings, transactional_id=f"ghost-{uuid.uuid4().hex[:8]}"))
        await ghost.init_transactions(30)
        await ghost.begin_transaction()
        for partition in range(topics.partitions):
            await ghost.produce(topics.jobs, key=b"ghost", value=b"never committed", partition=partition)
        await ghost.flush()
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with aiohttp.ClientSession() as session:

                async def restoring() -> tuple[int, dict[str, Any]] | None:
                    if task.done():
                        task.result()
                    if worker.side_port is None or not worker.side_port.port:
                        return None
                    status, body = await readyz(session, worker)
                    return (status, body) if str(body["detail"]).startswith("restoring partitions") else None

                status, body = await eventually(restoring, timeout=30, what="readyz saying restoring")
                seen_restoring = time.monotonic()
                assert status == 503 and body["ready"] is False
                assert worker.readiness()[0] is False
                health, health_body, _ = await fetch(session, worker, "/healthz")
                assert (health, json.loads(health_body)) == (200, {"status": "ok", "detail": "ok"})
                # No await in between, so the loop cannot take a turn: a loop that has not
                # turned for stall_timeout_s makes the process unhealthy (restarted).
                last_turn = worker.watchdog.last_turn
                worker.watchdog.last_turn = time.monotonic() - settings.stall_timeout_s - 1
                stalled = worker.healthy()
                worker.watchdog.last_turn = last_turn
                assert stalled[0] is False and "stalled" in stalled[1]

                await ghost.abort_transaction(30)
                ended = time.monotonic()

                async def ready() -> tuple[int, dict[str, Any]] | None:
                    got = await readyz(session, worker)
                    return got if got[0] == 200 else None

                status, body = await eventually(ready, timeout=30, what="readyz saying ready")
                assert body == {"ready": True, "detail": f"owns partitions {list(range(topics.partitions))}"}
                _, exposition, _ = await fetch(session, worker, "/metrics")
                # The restore started before 503 was seen and ended after the transaction did.
                assert value(exposition, "export_worker_restore_seconds_count") == 1
                assert value(exposition, "export_worker_restore_seconds_sum") >= ended - seen_restoring
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            await ghost.close()

    async def test_readyz_says_stopping_while_in_flight_calls_drain(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path
    ) -> None:
        """After stop is requested the worker is not ready (it takes no more requests) but
        alive until its in-flight calls are done; then the side port closes."""
        settings = side_port_settings(kafka_bootstrap, topics, tmp_path)
        sim = HeldItron(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=5)
        await sim.start()
        worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)})
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with aiohttp.ClientSession() as session, Publisher(settings) as pub:

                async def ready() -> bool:
                    if task.done():
                        task.result()
                    port = worker.side_port is not None and bool(worker.side_port.port)
                    return port and worker.readiness()[0] and bool(worker.partitions)

                await eventually(ready, timeout=60, what="worker ready")
                assert await readyz(session, worker) == (200, {"ready": True, "detail": "owns partitions [0, 1, 2]"})
                sim.hold()
                await pub.send(itron_request(rid("draining")))
                await pub.flush()
                await eventually(lambda: sim.parked >= 1, what="a poll in flight")
                stop.set()

                async def stopping() -> tuple[int, dict[str, Any]] | None:
                    got = await readyz(session, worker)
                    return got if got[1]["detail"] == "stopping" else None

                assert await eventually(stopping, what="readyz saying stopping") == (
                    503,
                    {"ready": False, "detail": "stopping"},
                )
                health, _, _ = await fetch(session, worker, "/healthz")
                assert health == 200
                assert not task.done()  # still draining the held call
                sim.let_go()
                await asyncio.wait_for(task, 60)
                with pytest.raises(aiohttp.ClientConnectionError):
                    await readyz(session, worker)
        finally:
            sim.let_go()
            stop.set()
            await asyncio.wait_for(task, 60)
            await sim.stop()


@dataclass
class Pipeline:
    settings: Settings
    sim: HeldItron
    pub: Publisher
    reader: OutputReader
    worker: Worker
    session: aiohttp.ClientSession

    async def metrics(self) -> str:
        status, body, content_type = await fetch(self.session, self.worker, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        return body

    async def run_one(self, request_id: str) -> None:
        await self.pub.send(itron_request(request_id))
        await self.pub.flush()
        await self.reader.wait_for(lambda o: terminal(o, [request_id]), what=f"{request_id} terminal")


@pytest.fixture(scope="module")
async def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    topics = TopicSettings(partitions=3).prefixed(f"m{uuid.uuid4().hex[:8]}.")
    settings = side_port_settings(kafka_bootstrap, topics, tmp_path_factory.mktemp("results"))
    sim = HeldItron(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=9)
    await sim.start()
    worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)})
    try:
        async with (
            running(worker),
            Publisher(settings) as pub,
            OutputReader(settings) as reader,
            aiohttp.ClientSession() as session,
        ):
            yield Pipeline(settings, sim, pub, reader, worker, session)
    finally:
        sim.let_go()
        await sim.stop()


class TestMetrics:
    async def test_healthz_answers_while_running(self, pipeline: Pipeline) -> None:
        status, body, _ = await fetch(pipeline.session, pipeline.worker, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "detail": "ok"})

    async def test_open_jobs_counts_a_job_while_it_is_open_and_drops_it_when_done(self, pipeline: Pipeline) -> None:
        r = rid("open")
        pipeline.sim.hold()
        try:
            await pipeline.pub.send(itron_request(r))
            await pipeline.pub.flush()
            await eventually(lambda: pipeline.sim.parked >= 1, what="the job's poll in flight")
            open_now = samples(await pipeline.metrics(), "export_worker_open_jobs", vendor="itron")
            assert [s.value for s in open_now] == [1.0]
            status = open_now[0].labels["status"]
            assert status in {"SUBMITTED", "QUEUED", "RUNNING"}
            # The label is the job's status as published (the held poll keeps it still).
            await pipeline.reader.wait_for(lambda o: o.statuses(r)[-1:] == [status], what=f"{r} {status}")
        finally:
            pipeline.sim.let_go()
        await pipeline.reader.wait_for(lambda o: terminal(o, [r]), what=f"{r} terminal")

        async def closed() -> bool:
            return value(await pipeline.metrics(), "export_worker_open_jobs", vendor="itron") == 0

        await eventually(closed, what="no open itron job")
        assert "export_worker_open_jobs" in family_names(await pipeline.metrics())

    async def test_metrics_after_a_successful_request(self, pipeline: Pipeline) -> None:
        r = rid("ok")
        await pipeline.run_one(r)
        out = await pipeline.reader.read()
        assert out.statuses(r)[-1] == "SUCCEEDED"
        text = await pipeline.metrics()
        itron = {"vendor": "itron", "connection": "itron"}

        # Every job the simulator created came from a submit counted as ok; polls too.
        calls = "export_worker_vendor_calls_total"
        assert value(text, calls, **itron, operation="submit", outcome="ok") == len(pipeline.sim.jobs)
        assert value(text, calls, **itron, operation="poll", outcome="ok") >= 1
        assert value(text, calls, **itron, operation="token", outcome="ok") >= 1

        # Latency: one histogram per operation, our buckets, a +Inf bucket per call made.
        for operation in ("submit", "poll"):
            buckets = samples(text, "export_worker_vendor_latency_seconds_bucket", vendor="itron", operation=operation)
            assert [b.labels["le"] for b in buckets] == [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
            made = value(text, calls, **itron, operation=operation)
            assert buckets[-1].value == made
            assert (
                value(text, "export_worker_vendor_latency_seconds_count", vendor="itron", operation=operation) == made
            )

        assert value(text, "export_worker_restore_seconds_count") >= 1
        assert value(text, "export_worker_transactions_total", outcome="committed") >= 1
        # Both are recorded together after each committed transaction.
        assert value(text, "export_worker_commit_seconds_count") == value(
            text, "export_worker_transactions_total", outcome="committed"
        )

        async def counted_as_published() -> bool:
            """Status and file counters equal what is on export.status and export.files."""
            exposition = await pipeline.metrics()
            output = await pipeline.reader.read()
            published = {
                s: sum(1 for e in output.status if e["status"] == s) for s in {e["status"] for e in output.status}
            }
            counted = {
                s.labels["status"]: s.value
                for s in samples(exposition, "export_worker_status_events_total", vendor="itron")
            }
            files = value(exposition, "export_worker_files_announced_total", vendor="itron")
            return counted == published and files == len(output.files)

        await eventually(counted_as_published, what="status and file counters matching the topics")
        assert value(text, "export_worker_status_events_total", vendor="itron", status="SUCCEEDED") >= 1
        assert value(text, "export_worker_files_announced_total", vendor="itron") >= 1

        # Lag is measured (every few seconds) for the partitions requests were read from;
        # a partition nothing was read from has no position yet, hence no sample.
        read_from = sorted({str(e["_partition"]) for e in (await pipeline.reader.read()).status})

        async def lag_caught_up() -> dict[str, float] | None:
            exposition = await pipeline.metrics()
            lag = {s.labels["partition"]: s.value for s in samples(exposition, "export_worker_consumer_lag")}
            return lag if sorted(lag) == read_from and not any(lag.values()) else None

        lag = await eventually(lag_caught_up, timeout=30, what="consumer lag 0 on the partitions read from")
        assert lag == dict.fromkeys(read_from, 0.0)

    async def test_a_429_counts_as_rate_limited(self, pipeline: Pipeline) -> None:
        before = await pipeline.metrics()
        itron = {"vendor": "itron", "connection": "itron"}
        injected = pipeline.sim.faults.injected.get("429", 0)
        pipeline.sim.faults.plan.retry_after_s = 0.2
        pipeline.sim.faults.plan.next_429 = 1
        r = rid("limited")
        await pipeline.run_one(r)
        after = await pipeline.metrics()
        assert (await pipeline.reader.read()).statuses(r)[-1] == "SUCCEEDED"
        assert pipeline.sim.faults.injected["429"] == injected + 1
        limited = "export_worker_vendor_rate_limited_total"
        assert value(after, limited, **itron) == value(before, limited, **itron) + 1
        calls = "export_worker_vendor_calls_total"
        assert (
            value(after, calls, **itron, outcome="rate_limited")
            == value(before, calls, **itron, outcome="rate_limited") + 1
        )
