"""Helpers for tests, benchmarks and the chaos run: publish requests, read the output
topics with read_committed, and wait on conditions (never on sleeps). Production code
(the CLI, the demo) does not import this module: the publisher and the output reader
live in ``worker.publisher`` and ``worker.output_reader`` and are re-exported here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from aiohttp import web

from worker import output_reader
from worker.codec import SchemaSet
from worker.config import ConnectionConfig, Settings
from worker.engine.model import Status
from worker.output_reader import Output
from worker.publisher import Publisher
from worker.vendor_registry import BY_NAME

__all__ = [
    "Draw",
    "FuzzedRequest",
    "Output",
    "OutputReader",
    "Publisher",
    "RandomDraw",
    "connections_json",
    "eventually",
    "fuzzed_request",
    "fuzzed_requests",
    "itron_request",
    "spawn_worker",
    "terminal",
    "worker_env",
]

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result  # type: ignore[misc]
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s (last: {last!r})")
        await asyncio.sleep(interval)


def request(
    request_id: str, job: tuple[str, dict[str, Any]], *, connection: str, tenant: str = "acme",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An ExportRequested record for ``job`` (its union branch and fields)."""
    return {
        "request_id": request_id,
        "tenant": tenant,
        "connection": connection,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": labels or {},
        "job": job,
        "replay_of": None,
    }


def elasticpath_request(
    request_id: str, job_type: str, *, connection: str = "ep", tenant: str = "acme"
) -> dict[str, Any]:
    """An Elastic Path subscription job request (``BILLING_RUN``, ``TAX_RUN``, ``PAYMENT_RUN``)."""
    return request(
        request_id, ("export.v1.ElasticPathJob", {"job_type": job_type}), connection=connection, tenant=tenant
    )


def itron_request(
    request_id: str,
    *,
    connection: str = "itron",
    tenant: str = "acme",
    tokens: dict[str, str] | None = None,
    filetype: str = "Csv",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date()
    job = {
        "filetype": filetype,
        "tokens": tokens
        or {
            "StartEventDate": (today - dt.timedelta(days=30)).isoformat(),
            "EndEventDate": today.isoformat(),
            "ServicePoint": "9000053409,9002036306",
        },
        "is_ohs_request": False,
        "subscription_id": None,
    }
    return request(
        request_id, ("export.v1.ItronBatchRequest", job), connection=connection, tenant=tenant, labels=labels
    )


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM each process still running (ours, by its handle), SIGKILL what outlives ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


class OutputReader(output_reader.OutputReader):
    """The production reader, plus waiting on a condition of the output (tests)."""

    async def wait_for(
        self, predicate: Callable[[Output], Any], *, timeout: float = 30.0, what: str = "output"
    ) -> Output:
        async def check() -> Any:
            out = await self.read()
            return out if predicate(out) else None

        return await eventually(check, timeout=timeout, what=what)


TERMINAL = frozenset(status.value for status in Status if status.terminal)


def finished(out: Output, request_ids: Iterable[str], statuses: frozenset[str] | None = None) -> set[str]:
    """The jobs of ``request_ids`` whose last status read is one of ``statuses`` (any
    terminal one by default); a SUCCEEDED job only once its FileReady is read too. The two
    are committed in one transaction, but a reader consumes the status and file topics
    each at its own pace, and under load it can read the status first."""
    last = out.last_status()
    done = {r for r in request_ids if last.get(r) in (statuses or TERMINAL)}
    succeeded = {r for r in done if last[r] == "SUCCEEDED"}
    if succeeded:
        done -= succeeded - {f["request_id"] for f in out.files}
    return done


def terminal(out: Output, request_ids: Iterable[str], statuses: frozenset[str] | None = None) -> bool:
    """Every job of ``request_ids`` ``finished``."""
    wanted = set(request_ids)
    return finished(out, wanted, statuses) == wanted


def worker_env(settings: Settings, *, connections_file: str, instance_id: str, http_port: int = -1) -> dict[str, str]:
    """Environment for an ``export-worker run`` process with these settings."""

    t = settings.topics
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_WORKER_") and k != "KAFKA_BOOTSTRAP"}
    env.update(
        {
            "EXPORT_WORKER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "EXPORT_WORKER_GROUP_ID": settings.group_id,
            "EXPORT_WORKER_INSTANCE_ID": instance_id,
            "EXPORT_WORKER_CONNECTIONS_FILE": connections_file,
            "EXPORT_WORKER_RESULT_STORE_URL": settings.result_store_url,
            "EXPORT_WORKER_HTTP_PORT": str(http_port),
            "EXPORT_WORKER_HTTP_HOST": "127.0.0.1",
            "EXPORT_WORKER_COMMIT_INTERVAL_MS": str(settings.commit_interval_ms),
            "EXPORT_WORKER_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
            "EXPORT_WORKER_TRANSACTION_TIMEOUT_MS": str(settings.transaction_timeout_ms),
            "EXPORT_WORKER_SHUTDOWN_GRACE_S": str(settings.shutdown_grace_s),
            "EXPORT_WORKER_REVOKE_DRAIN_S": str(settings.revoke_drain_s),
            "EXPORT_WORKER_MAX_ANSWER_BYTES": str(settings.max_answer_bytes),
            "EXPORT_WORKER_MAX_RETRY_AFTER_S": str(settings.max_retry_after_s),
            "EXPORT_WORKER_LOG_FORMAT": "json",
            "EXPORT_WORKER_LOG_LEVEL": os.environ.get("EXPORT_WORKER_TEST_LOG_LEVEL", "warning"),
            "EXPORT_WORKER_TOPICS__PARTITIONS": str(t.partitions),
            # Absolute, so the child keeps its stores where the caller meant them.
            "EXPORT_WORKER_STATE_DIR": str(settings.state_dir.resolve()),
            "EXPORT_WORKER_STATE_CACHE_MB": str(settings.state_cache_mb),
            "EXPORT_WORKER_STATE_WRITE_BUFFER_MB": str(settings.state_write_buffer_mb),
            "EXPORT_WORKER_STATE_MAX_MB": str(settings.state_max_mb),
            "EXPORT_WORKER_STATE_CLEANUP_S": str(settings.state_cleanup_s),
            "EXPORT_WORKER_BUDGET_MODE": settings.budget_mode.value,
            "EXPORT_WORKER_MEMORY_TRIM_S": str(settings.memory_trim_s),
        }
    )
    for name in ("requests", "status", "files", "jobs", "dlq", "control"):
        env[f"EXPORT_WORKER_TOPICS__{name.upper()}"] = getattr(t, name)
    return env


def connections_json(connections: dict[str, Any]) -> str:
    """A connections file (JSON) for ConnectionConfig objects, secrets written in clear
    (for simulators only)."""
    import json

    out = {}
    for name, conf in connections.items():
        data = json.loads(conf.model_dump_json())
        for field_name in ("client_secret", "password", "api_key"):
            ref = getattr(conf, field_name)
            if ref is not None and ref.value is not None:
                data[field_name] = {"value": ref.value.get_secret_value()}
        out[name] = data
    return json.dumps({"connections": out}, indent=2)


def spawn_worker(
    env: dict[str, str], log: Path | None = None, *, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``export-worker run`` as a separate process (stopped by its PID by the caller);
    with ``profile``, under pyinstrument (if installed) writing its report there on exit."""
    profiler = ["-m", "pyinstrument", "-r", "text", "-o", str(profile)] if profile else []
    args = [sys.executable, *profiler, "-m", "worker", "run"]
    if log is None:
        return subprocess.Popen(args, env=env)
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


# ---- fuzzed requests --------------------------------------------------------------------


class Draw(Protocol):
    """The choices a fuzzed request is made of. ``RandomDraw`` makes them from a seed (to
    publish fuzzed requests through a real worker); a property test makes them with
    hypothesis' ``data.draw``, which then shrinks a failing request."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        ...

    def text(self, max_size: int) -> str:
        """Any Unicode text (no surrogates: Avro strings are UTF-8) of at most ``max_size`` characters."""
        ...


# Code point ranges RandomDraw picks characters from: what breaks naive text handling.
_CHARACTERS = (
    (0x20, 0x7E),  # printable ASCII
    (0x00, 0x1F),  # control characters, NUL included
    (0x7F, 0x9F),  # DEL and C1 controls
    (0xA0, 0x2FF),  # Latin-1 and extended Latin
    (0x300, 0x36F),  # combining marks
    (0x200B, 0x200F),  # zero-width and direction marks
    (0x2028, 0x202E),  # line/paragraph separators, bidi overrides
    (0x4E00, 0x9FFF),  # CJK (three UTF-8 bytes, a \uXXXX escape in JSON)
    (0xE000, 0xF8FF),  # private use
    (0xFFF0, 0xFFFF),  # specials and non-characters
    (0x1F300, 0x1FAFF),  # emoji (four UTF-8 bytes, two escapes in JSON)
)


class RandomDraw:
    """``Draw`` from a seeded ``random.Random``: the same seed gives the same requests."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def text(self, max_size: int) -> str:
        size = self._rng.choice((0, 1, self._rng.randint(0, max_size)))
        ranges = [self._rng.choice(_CHARACTERS) for _ in range(self._rng.randint(1, 3))]
        return "".join(chr(self._rng.randint(*self._rng.choice(ranges))) for _ in range(min(size, max_size)))


class FuzzedRequest(NamedTuple):
    """A record to publish (``Publisher.raw(codec.encode("ExportRequested", record), key=key)``)."""

    key: bytes | None
    record: dict[str, Any]


_INTS = (0, 1, -1, 2**31 - 1, -(2**31))
_LONGS = (0, 1, -1, 2**63 - 1, -(2**63), 2**53, 1_700_000_000_000)
_TIMESTAMPS_MS = (0, -1, 1, -62_135_596_800_000, 253_402_300_799_999, 253_402_300_800_000, 2**63 - 1, -(2**63))


def fuzzed_request(
    draw: Draw, connections: Mapping[str, ConnectionConfig], *, max_bytes: int = 262_144, now_ms: int | None = None
) -> FuzzedRequest:
    """A schema-valid ExportRequested record with edge-case values, and the key to send it with.

    Any branch of ``job`` (often the one matching the chosen connection's vendor, often
    that vendor's simulator sample so it can be accepted), strings with control
    characters, unusual Unicode, empty or whitespace, one string sometimes filled to
    about ``max_bytes`` (just under or over), extreme and ordinary timestamps, maps with
    many entries; the connection is mostly one of ``connections``, the key mostly the
    request id. Every value round-trips through the worker's codec.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    schema = SchemaSet().by_name["ExportRequested"].raw
    names = _named_types(schema, "")
    fields = {f["name"]: f["type"] for f in schema["fields"]}
    names_list = sorted(connections)
    if names_list and draw.integer(0, 9) < 8:
        connection = names_list[draw.integer(0, len(names_list) - 1)]
    else:
        connection = _string(draw)
    request_id = _request_id(draw)
    record: dict[str, Any] = {
        "request_id": request_id,
        "tenant": "acme" if draw.integer(0, 1) else _string(draw),
        "connection": connection,
        "requested_at": now_ms if draw.integer(0, 5) else _TIMESTAMPS_MS[draw.integer(0, len(_TIMESTAMPS_MS) - 1)],
        "correlation_id": None if draw.integer(0, 1) else _string(draw),
        "labels": _value(draw, fields["labels"], names, "export.v1"),
        "job": _job(draw, fields["job"], names, connections.get(connection)),
        "replay_of": _replay_of(draw, request_id),
    }
    if draw.integer(0, 2) == 0:
        symbols = {s for node in names.values() if node.get("type") == "enum" for s in node["symbols"]}
        _fill_one_string(draw, record, max_bytes, symbols)
    key_kind = draw.integer(0, 19)
    key = request_id.encode() if key_kind < 18 else (None if key_kind == 18 else _string(draw).encode())
    return FuzzedRequest(key, record)


def fuzzed_requests(
    connections: Mapping[str, ConnectionConfig], *, count: int, seed: int = 0, max_bytes: int = 262_144
) -> Iterator[FuzzedRequest]:
    """``count`` fuzzed requests from ``seed`` (the same seed, the same requests)."""
    draw = RandomDraw(seed)
    for _ in range(count):
        yield fuzzed_request(draw, connections, max_bytes=max_bytes)


def _request_id(draw: Draw) -> str:
    kind = draw.integer(0, 5)
    if kind == 0:
        return _string(draw)  # anything, empty and whitespace included
    if kind == 1:
        return "r" * draw.integer(250, 260)  # around the 256-character limit
    return f"fuzz-{draw.integer(0, 10**12)}-{draw.text(8)}"


def _replay_of(draw: Draw, request_id: str) -> str | None:
    kind = draw.integer(0, 5)
    return request_id if kind == 0 else (_string(draw) if kind == 1 else None)


def _string(draw: Draw) -> str:
    kind = draw.integer(0, 7)
    if kind == 0:
        return ""
    if kind == 1:
        return " \t\n"[: draw.integer(1, 3)]
    return draw.text(40)


def _named_types(node: Any, namespace: str, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full name -> definition of every record and enum in ``node``."""
    found = {} if found is None else found
    if isinstance(node, list):
        for branch in node:
            _named_types(branch, namespace, found)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            name = node["name"] if "." in node["name"] else f"{node.get('namespace', namespace)}.{node['name']}"
            found[name] = node
            namespace = name.rpartition(".")[0]
        for key in ("type", "items", "values"):
            if isinstance(node.get(key), (dict, list)):
                _named_types(node[key], namespace, found)
        for field in node.get("fields", ()):
            _named_types(field["type"], namespace, found)
    return found


def _value(draw: Draw, node: Any, names: dict[str, Any], namespace: str, nested: bool = False) -> Any:
    """A random value of the schema ``node``; records of a union of records as (full name,
    record). Only the outermost array or map may get thousands of items (``nested``)."""
    if isinstance(node, list):
        branch = node[draw.integer(0, len(node) - 1)]
        value = _value(draw, branch, names, namespace, nested)
        records = [b for b in node if isinstance(b, dict) and b.get("type") == "record"]
        if len(records) > 1 and isinstance(branch, dict) and branch.get("type") == "record":
            return (_fullname(branch, namespace), value)
        return value
    if isinstance(node, str) and node not in _PRIMITIVE_VALUES:
        node = names[node if "." in node else f"{namespace}.{node}"]
    if isinstance(node, str):
        return _PRIMITIVE_VALUES[node](draw)
    kind = node["type"]
    if isinstance(kind, (dict, list)):
        return _value(draw, kind, names, namespace, nested)
    if node.get("logicalType") == "timestamp-millis":
        return (
            _TIMESTAMPS_MS[draw.integer(0, len(_TIMESTAMPS_MS) - 1)] if draw.integer(0, 3) == 0 else 1_700_000_000_000
        )
    if kind in _PRIMITIVE_VALUES:
        return _PRIMITIVE_VALUES[kind](draw)
    if kind == "enum":
        return node["symbols"][draw.integer(0, len(node["symbols"]) - 1)]
    if kind in ("array", "map"):
        count = _count(draw, nested)
        inner_node = node["items"] if kind == "array" else node["values"]
        if count > 4:
            # Thousands of items from one drawn item (cheap to draw, and to shrink).
            item, prefix = _value(draw, inner_node, names, namespace, True), _string(draw)
            return [item] * count if kind == "array" else {f"{prefix}{i}": item for i in range(count)}
        items = [_value(draw, inner_node, names, namespace, True) for _ in range(count)]
        return items if kind == "array" else {_string(draw) + str(i): item for i, item in enumerate(items)}
    inner = _fullname(node, namespace).rpartition(".")[0]
    return {f["name"]: _value(draw, f["type"], names, inner, nested) for f in node["fields"]}


def _count(draw: Draw, nested: bool) -> int:
    """How many items an array or map gets: mostly a few, sometimes (outermost only) thousands."""
    kind = draw.integer(0, 9)
    return 0 if kind == 0 else (draw.integer(500, 2000) if kind == 9 and not nested else draw.integer(1, 4))


def _fullname(node: dict[str, Any], namespace: str) -> str:
    name = str(node["name"])
    return name if "." in name else f"{node.get('namespace', namespace)}.{name}"


_PRIMITIVE_VALUES: dict[str, Callable[[Draw], Any]] = {
    "null": lambda draw: None,
    "boolean": lambda draw: bool(draw.integer(0, 1)),
    "int": lambda draw: (
        _INTS[draw.integer(0, len(_INTS) - 1)] if draw.integer(0, 1) else draw.integer(-(2**31), 2**31 - 1)
    ),
    "long": lambda draw: (
        _LONGS[draw.integer(0, len(_LONGS) - 1)] if draw.integer(0, 1) else draw.integer(-(2**63), 2**63 - 1)
    ),
    "string": _string,
    "bytes": lambda draw: _string(draw).encode(),
}


def _job(draw: Draw, union: list[Any], names: dict[str, Any], connection: ConnectionConfig | None) -> Any:
    """Often the connection's vendor's sample job (maybe with one field fuzzed), else any branch."""
    kind = draw.integer(0, 3)
    if connection is not None and kind < 2:
        job_type, job = importlib.import_module(BY_NAME[connection.vendor].simulator_module).sample_job()
        if kind == 1:
            definition = names[job_type]
            field = definition["fields"][draw.integer(0, len(definition["fields"]) - 1)]
            job = {**job, field["name"]: _value(draw, field["type"], names, job_type.rpartition(".")[0])}
        return (job_type, job)
    return _value(draw, union, names, "export.v1")


# Units a long string is made of: JSON escapes some of them to six or twelve bytes.
_FILLER_UNITS = ("x", "\x01", "\u4e2d", "\U0001f600", '"\\')


def _fill_one_string(draw: Draw, record: dict[str, Any], max_bytes: int, symbols: set[str]) -> None:
    """Make one string of the record about ``max_bytes`` long in UTF-8, just under or over
    the limit: a label, the tenant, or a string inside the job (not an enum's ``symbols``)."""
    kind = draw.integer(0, len(_FILLER_UNITS))
    unit = (_FILLER_UNITS[kind] if kind < len(_FILLER_UNITS) else draw.text(4)) or "x"
    target = max_bytes + draw.integer(-8192, 512)
    filler = unit * max(1, target // len(unit.encode()))
    leaves = _string_leaves(record["job"], symbols)
    where = draw.integer(0, 3)
    if where == 0:
        record["labels"] = {**record["labels"], "filler": filler}
    elif where == 1:
        record["tenant"] = filler
    elif leaves:
        container, index = leaves[draw.integer(0, len(leaves) - 1)]
        container[index] = filler
    else:
        record["correlation_id"] = filler


def _string_leaves(value: Any, symbols: set[str]) -> list[tuple[Any, Any]]:
    """(container, index) of every string inside ``value`` (a job) that is no enum symbol."""
    if isinstance(value, tuple):
        return _string_leaves(value[1], symbols)
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    found: list[tuple[Any, Any]] = []
    for index, item in items:
        if isinstance(item, str) and item not in symbols:
            found.append((value, index))
        else:
            found.extend(_string_leaves(item, symbols))
    return found


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1 (tests, and the benchmark of
    tracing's cost): decodes what it is sent, or only counts it (``decode=False``)."""

    def __init__(self, *, decode: bool = True) -> None:
        self.decode = decode
        self.requests = 0
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self._serving: contextlib.AbstractAsyncContextManager[int] | None = None
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.requests += 1
        payload = await request.read()
        if not self.decode:
            return web.Response(status=200, content_type="application/x-protobuf", body=b"")
        body = ExportTraceServiceRequest()
        body.ParseFromString(payload)
        for resource_spans in body.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            self.resources.append(attributes)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append({"name": span.name, "trace_id": span.trace_id.hex()})
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self._serving = local_app(app)
        port = await self._serving.__aenter__()
        self.url = f"http://127.0.0.1:{port}/v1/traces"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._serving is not None
        await self._serving.__aexit__(*exc)


@contextlib.asynccontextmanager
async def local_app(app: web.Application, **runner_options: Any) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 at a free port (yielded) until the block ends."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
