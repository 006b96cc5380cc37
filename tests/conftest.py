"""Real infrastructure for the suite: Apache Kafka (KAFKA_BOOTSTRAP, else the embedded
broker, started once per session) and vendor simulators on loopback ports."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.config import ConnectionConfig, PolicyConfig, SecretRef, Settings, TopicSettings
from worker.embedded import EmbeddedKafka
from worker.observability import configure_logging

configure_logging("warning", "console")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker = EmbeddedKafka()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.close()


@pytest.fixture
def topics() -> TopicSettings:
    """Fresh topic names per test, so tests never see each other's records."""
    return TopicSettings(partitions=3).prefixed(f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture
def settings(kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path) -> Settings:
    return make_settings(kafka_bootstrap, topics, tmp_path)


def make_settings(bootstrap: str, topics: TopicSettings, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topics": topics,
        "group_id": f"g-{topics.requests}",
        "instance_id": f"w-{uuid.uuid4().hex[:8]}",
        "http_port": -1,
        "commit_interval_ms": 20,
        "session_timeout_ms": 6000,
        "transaction_timeout_ms": 10000,
        "result_store_url": (tmp_path / "results").as_uri(),
        "state_dir": tmp_path / "state",
        "shutdown_grace_s": 10,
        "revoke_drain_s": 5,
    }
    values.update(overrides)
    return Settings(**values)


FAST_POLICY = PolicyConfig(
    first_poll_s=0.05, poll_initial_s=0.1, poll_multiplier=1.5, poll_max_s=0.5, retry_initial_s=0.1, retry_max_s=1.0
)


def itron_connection(base_url: str, **overrides: Any) -> ConnectionConfig:
    values: dict[str, Any] = {
        "vendor": "itron",
        "base_url": base_url,
        "client_id": "demo-client",
        "client_secret": SecretRef(value="demo-secret"),
        "subscription_id": "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10",
        "subscriber_id": "demo-subscriber",
        "policy": FAST_POLICY,
        "rate_per_s": 200,
    }
    values.update(overrides)
    return ConnectionConfig(**values)


@pytest.fixture
async def itron_sim() -> AsyncIterator[Any]:
    from worker.simulators.base import Timing
    from worker.simulators.itron import ItronSimulator

    sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=7)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def running(worker: Any) -> AsyncIterator[Any]:
    """Run a Worker in the background; stop it gracefully at the end."""
    import asyncio

    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def started() -> bool:
        if task.done():
            task.result()
        return worker.readiness()[0] and bool(worker.partitions)

    from worker.testing import eventually

    await eventually(started, timeout=60, what="worker ready")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
