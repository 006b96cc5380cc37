"""Helpers for tests, the demo, benchmarks and the chaos run: publish requests, read
the output topics with read_committed, and wait on conditions (never on sleeps)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from worker.codec import Codec
from worker.config import Settings, TopicSettings
from worker.kafka import admin_client, base_config, describe_partitions, ensure_topics, producer_config

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


class Publisher:
    """Publishes ExportRequested records keyed by request_id (Java-compatible partitioner)."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or Codec()
        self._producer: AIOProducer | None = None

    async def __aenter__(self) -> Publisher:
        await ensure_topics(self.settings, admin_client(self.settings))
        self._producer = AIOProducer(producer_config(self.settings), batch_size=1000, buffer_timeout=0.05)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.close()

    async def send(self, record: dict[str, Any], *, key: bytes | None = None) -> None:
        value = self.codec.encode("ExportRequested", record, topic=self.settings.topics.requests)
        await self.raw(value, key=key if key is not None else record["request_id"].encode())

    async def raw(self, value: bytes | None, *, key: bytes | None) -> None:
        assert self._producer is not None
        await self._producer.produce(self.settings.topics.requests, value=value, key=key)

    async def flush(self) -> None:
        assert self._producer is not None
        await self._producer.flush()


@dataclass
class Output:
    """Everything read so far from the worker's output topics."""

    status: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def statuses(self, request_id: str) -> list[str]:
        return [e["status"] for e in self.status if e["request_id"] == request_id]

    def events(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.status if e["request_id"] == request_id]

    def files_for(self, request_id: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f["request_id"] == request_id]

    def last_status(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for e in self.status:
            last[e["request_id"]] = e["status"]
        return last


class OutputReader:
    """Reads export.status, export.files, the DLQ and export.jobs with read_committed."""

    def __init__(self, settings: Settings, codec: Codec | None = None, *, include_jobs: bool = True) -> None:
        self.settings = settings
        self.codec = codec or Codec()
        self.include_jobs = include_jobs
        self.output = Output()
        self.raw_counts: dict[str, int] = defaultdict(int)
        self._consumer: AIOConsumer | None = None
        self._names: dict[str, str] = {}

    async def __aenter__(self) -> OutputReader:
        t: TopicSettings = self.settings.topics
        self._names = {t.status: "JobStatusChanged", t.files: "FileReady", t.dlq: "DeadLetter"}
        if self.include_jobs:
            self._names[t.jobs] = "JobState"
        conf = {
            **base_config(self.settings),
            "group.id": "export-worker-test-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
        self._consumer = AIOConsumer(conf, max_workers=2)
        await ensure_topics(self.settings, admin_client(self.settings))
        counts = await describe_partitions(admin_client(self.settings), list(self._names))
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic, n in counts.items() for p in range(n)]
        await self._consumer.assign(tps)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.close()

    async def read(self, timeout: float = 0.2) -> Output:
        assert self._consumer is not None
        t = self.settings.topics
        while True:
            batch = await self._consumer.consume(num_messages=5000, timeout=timeout)
            if not batch:
                return self.output
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(err.str())
                    continue
                topic = msg.topic()
                self.raw_counts[topic] += 1
                if topic == t.jobs:
                    key = msg.key().decode()
                    self.output.jobs[key] = None if msg.value() is None else self.codec.decode("JobState", msg.value())
                    continue
                record = self.codec.decode(self._names[topic], msg.value())
                record["_partition"] = msg.partition()
                record["_offset"] = msg.offset()
                {t.status: self.output.status, t.files: self.output.files, t.dlq: self.output.dlq}[topic].append(record)
            timeout = 0.0

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
