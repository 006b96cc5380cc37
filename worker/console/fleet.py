"""The fleet page's figures that do not come from the index: the workers' consumer lag
(their group's committed offsets against the ends of the requests topic) and what each
worker's ``/metrics`` says. Refreshed in the background every ``REFRESH_S``, so a page
shows the last snapshot and never waits for a broker or a worker.

Worker endpoints are operator-given URLs, and their answers are treated as untrusted:
each scrape has a timeout and a size cap, and one bad worker shows as that worker's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import structlog
from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from worker.config import Settings
from worker.ops.kafkaio import Cluster

log = structlog.get_logger("export_worker.console")

REFRESH_S = 5.0
# One worker's /metrics answer: read at most this many bytes, wait at most this long.
MAX_METRICS_BYTES = 2 * 1024 * 1024
SCRAPE_TIMEOUT_S = 2.0
# Worker endpoints the console scrapes at most.
MAX_WORKERS = 64
# Connections one worker's rate-limit figures may name (the rest are summed as "others").
MAX_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as its /metrics shows it (``error`` set when it could not be read)."""

    url: str
    error: str | None = None
    assigned_partitions: int = 0
    consumer_lag: int = 0
    intake_paused: bool = False
    rate_limited: dict[str, int] = field(default_factory=dict)  # connection -> 429s since start


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    lag: dict[int, int] | None = None  # requests partition -> records not yet read by the group
    lag_error: str | None = None
    workers: tuple[WorkerView, ...] = ()
    at: float = 0.0  # epoch seconds

    @property
    def total_lag(self) -> int | None:
        return None if self.lag is None else sum(self.lag.values())


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"a figure is {value}")
    return value


def _count(value: float) -> int:
    return int(_finite(value))


def parse_metrics(url: str, text: str) -> WorkerView:
    """The figures the console shows, from a worker's Prometheus text; ValueError when
    it is not Prometheus text or a figure is not finite."""
    assigned = lag = 0
    paused = False
    limited: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "export_worker_assigned_partitions":
                assigned += _count(sample.value)
            elif sample.name == "export_worker_consumer_lag":
                lag += _count(sample.value)
            elif sample.name == "export_worker_intake_paused":
                paused = paused or _finite(sample.value) > 0
            elif sample.name == "export_worker_vendor_rate_limited_total":
                connection = sample.labels.get("connection", "?")[:100]
                if connection not in limited and len(limited) >= MAX_CONNECTIONS:
                    connection = "others"
                limited[connection] += _count(sample.value)
    return WorkerView(url, None, assigned, lag, paused, dict(limited))


def shown_url(url: str) -> str:
    """A worker URL as the pages show it: without credentials."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "(not a URL)"
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


async def scrape(session: aiohttp.ClientSession, url: str) -> WorkerView:
    """One worker's figures; whatever goes wrong is that worker's error, never an
    exception. Redirects are not followed (a worker has no reason to send one), and
    nothing of a bad answer is shown, only what was wrong with it."""
    shown = shown_url(url)
    try:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        async with session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                return WorkerView(shown, f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    return WorkerView(shown, f"answer larger than {MAX_METRICS_BYTES} bytes")
        # Parsing up to 2 MiB takes a while: off the loop, so that pages keep answering.
        return await asyncio.to_thread(parse_metrics, shown, body.decode("utf-8", "replace"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        if isinstance(exc, ValueError) and not isinstance(exc, aiohttp.ClientError):
            return WorkerView(shown, "not Prometheus metrics (or a figure that is not a finite number)")
        return WorkerView(shown, f"unreachable: {type(exc).__name__}")
    except Exception as exc:  # a hostile answer must not stop the fleet page
        return WorkerView(shown, f"unreadable answer: {type(exc).__name__}")


class FleetWatcher:
    """Keeps ``snapshot`` fresh until ``stop`` is set."""

    def __init__(self, settings: Settings, cluster: Cluster, worker_metrics: list[str]) -> None:
        self.settings = settings
        self.cluster = cluster
        self.worker_metrics = worker_metrics[:MAX_WORKERS]
        self.snapshot = FleetSnapshot()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    await self.refresh(session)
                except Exception:  # the page keeps the last snapshot; the next round tries again
                    log.exception("console fleet refresh failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REFRESH_S)

    async def refresh(self, session: aiohttp.ClientSession) -> FleetSnapshot:
        lag_task = asyncio.create_task(self._lag())
        workers = await asyncio.gather(*(scrape(session, url) for url in self.worker_metrics))
        lag, lag_error = await lag_task
        self.snapshot = FleetSnapshot(lag, lag_error, tuple(workers), time.time())
        return self.snapshot

    async def _lag(self) -> tuple[dict[int, int] | None, str | None]:
        topic = self.settings.topics.requests
        try:
            count = await self.cluster.partitions(topic)
            committed = await self.cluster.committed(self.settings.group_id, topic, range(count))
            starts = await self.cluster.beginnings(topic, range(count))
            ends = await self.cluster.ends(topic, range(count))
        except KafkaException as exc:
            return None, exc.args[0].str() if exc.args else "Kafka error"
        except Exception as exc:  # the page shows why; the next refresh tries again
            return None, f"{type(exc).__name__}: {str(exc)[:200]}"
        lag = {}
        for p in range(count):
            at = committed.get(p, -1)
            lag[p] = max(0, ends[p] - max(at, starts[p]))  # none committed, or below the log start
        return lag, None
