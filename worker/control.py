"""Operator commands shared by every worker through the compacted control topic.

Key: ``connection:<name>`` or ``vendor:<name>``; value: JSON ``{"paused": bool, "reason",
"by", "at"}``. Every worker reads the whole topic (not as a group member) from the
beginning, so a pause outlives restarts, and applies the latest value per key.
A paused connection submits nothing new; its open jobs keep being polled (drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from worker.config import Settings
from worker.kafka import base_config, producer_config

log_name = "export_worker.control"


@dataclass(frozen=True, slots=True)
class ControlState:
    """Latest pause flags by key (``connection:x`` / ``vendor:y``)."""

    paused: frozenset[str]

    def is_paused(self, connection: str, vendor: str) -> bool:
        return f"connection:{connection}" in self.paused or f"vendor:{vendor}" in self.paused


def control_key(target: str, *, vendor: bool) -> bytes:
    return f"{'vendor' if vendor else 'connection'}:{target}".encode()


async def publish_control(settings: Settings, key: bytes, *, paused: bool, reason: str | None, by: str) -> None:
    producer = AIOProducer(producer_config(settings), batch_size=1, buffer_timeout=0)
    try:
        value = json.dumps({"paused": paused, "reason": reason, "by": by, "at": int(time.time() * 1000)})
        delivery = await producer.produce(settings.topics.control, value=value.encode(), key=key)
        await producer.flush(10)
        await delivery
    finally:
        await producer.close()


async def read_control(settings: Settings, *, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """The current value of every control key (for ``export-worker status``-like views)."""
    state: dict[str, dict[str, Any]] = {}
    consumer = AIOConsumer(
        {**base_config(settings), "group.id": f"{settings.group_id}.control-reader", "enable.partition.eof": True,
         "enable.auto.commit": False, "isolation.level": "read_committed"},
        max_workers=1,
    )  # fmt: skip
    try:
        await consumer.assign([TopicPartition(settings.topics.control, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in await consumer.consume(1000, 0.05):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        return state
                    continue
                _apply(state, msg.key(), msg.value())
        return state
    finally:
        await consumer.close()


def _apply(state: dict[str, dict[str, Any]], key: bytes | None, value: bytes | None) -> None:
    if key is None:
        return
    name = key.decode("utf-8", "replace")
    if value is None:
        state.pop(name, None)
        return
    try:
        data = json.loads(value)
    except ValueError:
        return
    if isinstance(data, dict):
        state[name] = data


async def read_control_state(settings: Settings) -> ControlState:
    """The pauses in force now (the control topic read to its end)."""
    state = await read_control(settings)
    return ControlState(frozenset(k for k, v in state.items() if v.get("paused")))


class ControlFollower:
    """Follows the control topic and reports each new ControlState to ``on_change``."""

    def __init__(self, settings: Settings, on_change: Callable[[ControlState], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        state: dict[str, dict[str, Any]] = {}
        consumer = AIOConsumer(
            {**base_config(self.settings), "group.id": f"{self.settings.group_id}.control",
             "enable.auto.commit": False, "isolation.level": "read_committed", "fetch.wait.max.ms": 100},
            max_workers=1,
        )  # fmt: skip
        try:
            await consumer.assign([TopicPartition(self.settings.topics.control, 0, OFFSET_BEGINNING)])
            while True:
                batch = await consumer.consume(100, 0.5)
                changed = False
                for msg in batch:
                    if msg.error() is None:
                        _apply(state, msg.key(), msg.value())
                        changed = True
                if changed:
                    paused = frozenset(k for k, v in state.items() if v.get("paused"))
                    self.on_change(ControlState(paused))
        finally:
            await consumer.close()
