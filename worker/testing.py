"""Helpers for tests, benchmarks and the chaos run: publish requests, read the output
topics with read_committed, and wait on conditions (never on sleeps). Production code
(the CLI, the demo) does not import this module: the publisher and the output reader
live in ``worker.publisher`` and ``worker.output_reader`` and are re-exported here."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from worker import output_reader
from worker.config import Settings
from worker.output_reader import Output
from worker.publisher import Publisher

__all__ = [
    "Output",
    "OutputReader",
    "Publisher",
    "connections_json",
    "eventually",
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
    return {
        "request_id": request_id,
        "tenant": tenant,
        "connection": connection,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": labels or {},
        "job": (
            "export.v1.ItronBatchRequest",
            {
                "filetype": filetype,
                "tokens": tokens
                or {
                    "StartEventDate": (today - dt.timedelta(days=30)).isoformat(),
                    "EndEventDate": today.isoformat(),
                    "ServicePoint": "9000053409,9002036306",
                },
                "is_ohs_request": False,
                "subscription_id": None,
            },
        ),
        "replay_of": None,
    }


class OutputReader(output_reader.OutputReader):
    """The production reader, plus waiting on a condition of the output (tests)."""

    async def wait_for(
        self, predicate: Callable[[Output], Any], *, timeout: float = 30.0, what: str = "output"
    ) -> Output:
        async def check() -> Any:
            out = await self.read()
            return out if predicate(out) else None

        return await eventually(check, timeout=timeout, what=what)


def terminal(out: Output, request_ids: Iterable[str], statuses: frozenset[str] | None = None) -> bool:
    wanted = statuses or frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "REJECTED"})
    last = out.last_status()
    return all(last.get(r) in wanted for r in request_ids)


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
            "EXPORT_WORKER_LOG_FORMAT": "json",
            "EXPORT_WORKER_LOG_LEVEL": os.environ.get("EXPORT_WORKER_TEST_LOG_LEVEL", "warning"),
            "EXPORT_WORKER_TOPICS__PARTITIONS": str(t.partitions),
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
