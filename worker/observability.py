"""Logs (structlog, secrets redacted), Prometheus metrics and the HTTP side port."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.redaction import MASK, redact, redact_text, secret_key
from worker.tracing import current_ids

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# Values no pattern can hold a secret in: written as they are.
_PLAIN_SCALARS = (int, float, bool)


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and scrub tokens out of values."""
    for key, value in list(event_dict.items()):
        if secret_key(key):
            event_dict[key] = MASK
        elif value is None or type(value) in _PLAIN_SCALARS:
            continue  # most fields of a status line: checked without a call
        elif isinstance(value, str):
            redacted = redact_text(value)
            if redacted is not value:
                event_dict[key] = redacted
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = redact(value)
    return event_dict


def exception_text(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: a line's ``exc_info`` as its redacted ``exception`` text
    (``format_exc_info``, then redaction); a line without one (nearly all) is left as it is."""
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = redact(exc)
    return event_dict


# What a log line written during a vendor call is about (request, vendor, connection, job
# id): set once per call task. One ContextVar set per call, where structlog's
# bind_contextvars sets one per field on every call (a few % of the loop's CPU).
call_context: ContextVar[dict[str, Any] | None] = ContextVar("export_worker_call_context", default=None)


def merge_call_context(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    bound = call_context.get()
    if bound:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    return event_dict


def add_trace_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """trace_id / span_id of the span current where the line was written (tracing on)."""
    ids = current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


# The second this process last stamped a line, and its text: a line's timestamp is that
# text and the microseconds (a datetime per line cost 1.6 us of a status line's ~17).
_stamped_second: tuple[int, str] = (-1, "")


def add_timestamp(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: ISO 8601 in UTC with microseconds, ``2026-12-06T21:14:05.068536Z``."""
    global _stamped_second
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    stamped = _stamped_second
    if stamped[0] != second:  # another thread may do the same at once: both write the same text
        stamped = _stamped_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event_dict["timestamp"] = f"{stamped[1]}.{micros:06d}Z"
    return event_dict


# What orjson hands to ``default`` rather than writing itself, so it is written as the
# standard library's renderer wrote it: dataclasses (orjson would write every field, the
# ``repr=False`` ones too) and dates. It does write enums and UUIDs by their value.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _fallback(value: Any) -> Any:
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if callable(structlog_form) else repr(value)


def render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One JSON line, written by orjson (0.4 us a status line, the standard library 4 us).
    What orjson refuses (an integer beyond 64 bits, a lone surrogate, a key that is not a
    text, nesting past 254 levels) the standard library writes, as it did every line."""
    try:
        return orjson.dumps(event_dict, default=_fallback, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(event_dict, default=_fallback)


# The ``status`` line is written at every status change of every job, thousands a second
# in a busy worker. When lines are JSON at ``info`` or below, ``configure_logging`` sets a
# writer that calls the JSON pipeline's processors in a row and writes the line, without
# structlog's generic path around them (a bound logger, a copy of its context, the loop
# over processors, a lock of its own; lines are written whole by the stream either way):
# the same line for ~6.5 µs of CPU instead of ~9.3.
# Used only while structlog still has the configuration it was set up with (a test that
# captures logs or configures structlog otherwise gets structlog's path).
StatusWriter = Callable[[dict[str, Any]], None]
_status_writer: tuple[tuple[Any, Any, Any], StatusWriter] | None = None
# structlog's path: a logger of the configuration in force, kept until it changes.
_status_logger: tuple[tuple[Any, Any, Any], Any] | None = None


def _structlog_setup() -> tuple[Any, Any, Any]:
    config = structlog.get_config()
    return config["processors"], config["wrapper_class"], config["logger_factory"]


def _same(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> bool:
    return a[0] is b[0] and a[1] is b[1] and a[2] is b[2]


def log_status(fields: dict[str, Any]) -> None:
    """Write the ``status`` line of one status change (``fields`` are taken over)."""
    global _status_logger
    setup = _structlog_setup()
    direct = _status_writer
    # structlog's capture_logs() swaps the processors inside the same list.
    if direct is not None and _same(setup, direct[0]) and setup[0][-1] is render_json:
        direct[1](fields)
        return
    kept = _status_logger
    if kept is None or not _same(setup, kept[0]):
        kept = _status_logger = (setup, structlog.get_logger("export_worker").bind())
    kept[1].info("status", **fields)


def _json_status_writer(stream: Any) -> StatusWriter:
    """What structlog's JSON pipeline writes for ``log.info("status", **fields)``, step by
    step in the same order (``tests/unit/test_log_lines.py`` compares the two)."""
    write, flush = stream.write, stream.flush

    def write_status(fields: dict[str, Any]) -> None:
        fields["event"] = "status"
        merge_call_context(None, "info", fields)
        redact_processor(None, "info", fields)
        add_trace_ids(None, "info", fields)
        fields["level"] = "info"
        add_timestamp(None, "info", fields)
        write(render_json(None, "info", fields) + "\n")
        flush()

    return write_status


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """JSON lines for machines; a readable console when attached to a TTY. Standard
    library records (librdkafka's, aiohttp's) are rendered the same way."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else render_json
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        merge_call_context,
        redact_processor,
        # What is added from here on is ours and holds no secret (the timestamp's colons
        # would only send every line through redaction's slow path).
        add_trace_ids,
        structlog.processors.add_log_level,
        add_timestamp,
    ]
    processors = [*shared, exception_text, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() makes two, each a system call when stderr is
        # unbuffered, as PYTHONUNBUFFERED makes it in our image).
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            # Their exc_info is a raw tuple: render the traceback first, so it is redacted
            # like ours (and shown at all, rather than as reprs).
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exception_text,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    global _status_writer
    direct = renderer is render_json and numeric <= logging.INFO
    _status_writer = (_structlog_setup(), _json_status_writer(sys.stderr)) if direct else None


class _OpenJobs(Collector):
    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "export_worker_open_jobs", "Jobs not yet terminal, by vendor and status", labels=["vendor", "status"]
        )
        for (vendor, status), n in sorted(self._counts().items()):
            family.add_metric([vendor, status], n)
        yield family


class Metrics:
    """All metrics of one worker, in their own registry (several workers may share a
    process in tests and the demo)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("export_worker_requests", "Requests read, by outcome", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "export_worker_dead_letters", "Records sent to the DLQ, by reason", ["reason"], registry=r
        )
        self.vendor_calls = Counter(
            "export_worker_vendor_calls",
            "Vendor calls by connection, operation and outcome",
            ["vendor", "connection", "operation", "outcome"],
            registry=r,
        )
        self.vendor_latency = Histogram(
            "export_worker_vendor_latency_seconds",
            "Vendor HTTP call latency",
            ["vendor", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "export_worker_vendor_rate_limited", "429 answers received", ["vendor", "connection"], registry=r
        )
        self.status_events = Counter(
            "export_worker_status_events", "Status events published", ["vendor", "status"], registry=r
        )
        self.files = Counter("export_worker_files_announced", "FileReady events published", ["vendor"], registry=r)
        self.transactions = Counter(
            "export_worker_transactions", "Kafka transactions by outcome", ["outcome"], registry=r
        )
        self.producers_replaced = Counter(
            "export_worker_producers_replaced",
            "Fenced transactional producers replaced in place (the owned partitions read back)",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "export_worker_commit_seconds",
            "Duration of one Kafka transaction (begin to commit)",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.commit_records = Histogram(
            "export_worker_commit_records",
            "Records written per transaction",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000),
            registry=r,
        )
        self.restore_seconds = Histogram(
            "export_worker_restore_seconds",
            "Time to restore assigned export.jobs partitions",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.restored_jobs = Counter("export_worker_restored_jobs", "Open job states restored", registry=r)
        self.restored_records = Counter(
            "export_worker_restored_records",
            "export.jobs records read into partition stores: the tail (warm) or the whole log (cold)",
            ["mode"],
            registry=r,
        )
        self.store_opens = Counter(
            "export_worker_store_opens",
            "Partition stores opened: warm, or wiped for a reason (no_checkpoint, other_log, too_old ...)",
            ["result"],
            registry=r,
        )
        self.store_memory = Gauge(
            "export_worker_store_memory_bytes",
            "RocksDB block cache and memtables of all partition stores (one budget: EXPORT_WORKER_STATE_CACHE_MB)",
            registry=r,
        )
        self.store_failures = Counter(
            "export_worker_store_failures", "Partition store writes or reads that failed", registry=r
        )
        self.swept = Counter(
            "export_worker_swept", "Expiry index entries handled, by outcome (stepped, ghost)", ["outcome"], registry=r
        )
        self.retention_lag = Gauge(
            "export_worker_retention_lag_seconds",
            "How far past due the oldest finished job the last sweep found still is",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "export_worker_consumer_lag", "Requests not yet read, by partition", ["partition"], registry=r
        )
        self.assigned = Gauge("export_worker_assigned_partitions", "Partitions owned", registry=r)
        self.intake_paused = Gauge(
            "export_worker_intake_paused", "1 while no new requests are read: too many open jobs", registry=r
        )
        self.intake_pauses = Counter(
            "export_worker_intake_pauses", "Times reading new requests was paused for too many open jobs", registry=r
        )
        self.open_jobs_limit = Gauge(
            "export_worker_open_jobs_limit", "Open jobs at which reading new requests pauses; 0: no limit", registry=r
        )
        self.budget_rate = Gauge(
            "export_worker_budget_rate_per_s",
            "A connection's call rate: the fleet's (configured) and this worker's share of it",
            ["connection", "scope"],
            registry=r,
        )
        self.budget_concurrency = Gauge(
            "export_worker_budget_concurrency",
            "A connection's concurrent calls: the fleet's (configured) and this worker's share of it",
            ["connection", "scope"],
            registry=r,
        )
        self.adaptive_concurrency = Gauge(
            "export_worker_adaptive_concurrency",
            "Calls a connection may have in flight now: this worker's share, halved by 429s and grown back (AIMD)",
            ["connection"],
            registry=r,
        )
        self.exclusive_waiting = Gauge(
            "export_worker_exclusive_waiting",
            "Jobs of an exclusive kind waiting for the one before them to end (in this worker's home partitions)",
            registry=r,
        )
        self.connection_blocks = Counter(
            "export_worker_connection_blocks",
            "Times a connection was blocked: after its own 429 or 503 with Retry-After (local), "
            "or by another worker's (fleet)",
            ["connection", "source"],
            registry=r,
        )
        self.memory_trims = Counter(
            "export_worker_memory_trims", "Times freed heap memory was offered back to the OS", registry=r
        )
        self.memory_trimmed = Counter(
            "export_worker_memory_trimmed_bytes", "Resident memory given back to the OS by those trims", registry=r
        )
        self.poll_lateness = Histogram(
            "export_worker_timer_lateness_seconds",
            "How late a due job was handed its call",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (labels() costs microseconds per call)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def watch_open_jobs(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.registry.register(_OpenJobs(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SidePort:
    """``/healthz`` (the process is alive), ``/readyz`` (assigned partitions restored,
    broker reachable), ``/metrics`` (Prometheus text format)."""

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], tuple[bool, str]],
        healthy: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.healthy = healthy or (lambda: (True, "ok"))
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, why = self.healthy()
        return web.json_response({"status": "ok" if ok else "unhealthy", "detail": why}, status=200 if ok else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.json_response({"ready": ok, "detail": why}, status=200 if ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
