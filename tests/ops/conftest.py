"""Helpers for the operator CLI tests: run ``export-worker`` in-process against the
test's topics, and run a Worker with the Itron simulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer
from typer.testing import CliRunner, Result

from tests.conftest import itron_connection, running
from worker.cli import app
from worker.config import ConnectionConfig, Settings
from worker.kafka import base_config
from worker.runtime import Worker
from worker.testing import connections_json


def cli_env(settings: Settings, **extra: str | None) -> dict[str, str | None]:
    """The environment ``export-worker`` reads to reach the test's broker and topics."""
    t = settings.topics
    env: dict[str, str | None] = {
        "EXPORT_WORKER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KAFKA_BOOTSTRAP": None,
        "EXPORT_WORKER_GROUP_ID": settings.group_id,
        "EXPORT_WORKER_CONNECTIONS_FILE": None,
        "EXPORT_WORKER_SCHEMA_REGISTRY_URL": None,
    }
    for name in ("requests", "status", "files", "jobs", "dlq", "control"):
        env[f"EXPORT_WORKER_TOPICS__{name.upper()}"] = getattr(t, name)
    env.update(extra)
    return env


async def cli(settings: Settings, *args: str, **env: str | None) -> Result:
    """``export-worker <args>`` in a thread (its asyncio.run must not nest in the test's loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args), env=cli_env(settings, **env))


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def write_connections(path: Path, connections: dict[str, ConnectionConfig]) -> Path:
    path.write_text(connections_json(connections))
    return path


def itron_worker(settings: Settings, sim: Any, *names: str) -> Worker:
    """A worker whose connections (default: ``itron``) all point at the Itron simulator."""
    return Worker(settings, connections={name: itron_connection(sim.base_url) for name in names or ("itron",)})


@asynccontextmanager
async def worker_running(settings: Settings, sim: Any, *names: str) -> AsyncIterator[Worker]:
    async with running(itron_worker(settings, sim, *names)) as worker:
        yield worker


def submits(sim: Any) -> int:
    """Batch requests the Itron simulator received (vendor jobs created)."""
    return len([r for r in sim.requests if r["method"] == "POST" and r["path"].startswith("/dpss/")])


async def consume_all(settings: Settings, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` with a plain consumer (independent of the code under test)."""
    consumer = AIOConsumer(
        {**base_config(settings), "group.id": "ops-test", "enable.partition.eof": True,
         "isolation.level": "read_committed", "enable.auto.commit": False},
        max_workers=1,
    )  # fmt: skip
    out: list[Any] = []
    try:
        await consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        pending = set(range(partitions))
        while pending:
            for msg in await consumer.consume(1000, 0.2):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                out.append(msg)
    finally:
        await consumer.close()
    return out
