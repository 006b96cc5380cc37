"""Operator commands shared by every worker through the compacted control topic.

Keys and values (JSON):

* ``connection:<name>`` / ``vendor:<name>``: ``{"paused": bool, "reason", "by", "at"}``,
  an operator's pause. A paused connection submits nothing new; its open jobs keep
  being polled (drain).
* ``block:<connection>``: ``{"until": epoch ms, "reason", "by", "at"}``, written by a
  worker that got a 429 (or a 503 with Retry-After): no worker of the fleet calls that
  connection before ``until``. A reader cuts it to its own ``max_retry_after_s``.

Every worker reads the whole topic (not as a group member) from the beginning, so a
pause outlives restarts, and applies the latest value per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from worker.config import Settings
from worker.kafka import base_config, producer_config

log_name = "export_worker.control"
log = structlog.get_logger(log_name)


BLOCK = "block:"


@dataclass(frozen=True, slots=True)
class ControlState:
    """Latest pause flags by key (``connection:x`` / ``vendor:y``), and the fleet-wide
    blocks by connection (until, epoch ms)."""

    paused: frozenset[str]
    blocks: Mapping[str, int] = field(default_factory=dict)

    def is_paused(self, connection: str, vendor: str) -> bool:
        return f"connection:{connection}" in self.paused or f"vendor:{vendor}" in self.paused

    @classmethod
    def of(cls, values: Mapping[str, Mapping[str, Any]]) -> ControlState:
        """The state the latest value of each key says (unusable values count as absent)."""
        paused = frozenset(k for k, v in values.items() if not k.startswith(BLOCK) and v.get("paused"))
        blocks = {}
        for key, value in values.items():
            until = value.get("until")
            if key.startswith(BLOCK) and isinstance(until, int) and not isinstance(until, bool):
                blocks[key[len(BLOCK) :]] = until
        return cls(paused, blocks)


def control_key(target: str, *, vendor: bool) -> bytes:
    return f"{'vendor' if vendor else 'connection'}:{target}".encode()


def block_key(connection: str) -> bytes:
    return f"{BLOCK}{connection}".encode()


def block_value(until_ms: int, reason: str, by: str) -> bytes:
    return json.dumps({"until": until_ms, "reason": reason, "by": by, "at": int(time.time() * 1000)}).encode()


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
                apply_control(state, msg.key(), msg.value())
        return state
    finally:
        await consumer.close()


def apply_control(state: dict[str, dict[str, Any]], key: bytes | None, value: bytes | None) -> None:
    """Fold one control record into ``state``: the latest JSON object per key wins, a
    tombstone removes its key, anything else is ignored."""
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
    return ControlState.of(await read_control(settings))


class ControlFollower:
    """Follows the control topic and reports each new ControlState to ``on_change``;
    publishes this worker's connection blocks for the rest of the fleet."""

    def __init__(self, settings: Settings, on_change: Callable[[ControlState], None]) -> None:
        self.settings = settings
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOProducer | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    def publish_block(self, connection: str, until_ms: int, reason: str) -> None:
        """Tell the fleet (in the background: the loop does not wait for the broker)."""
        task = asyncio.create_task(self._publish_block(connection, until_ms, reason))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_block(self, connection: str, until_ms: int, reason: str) -> None:
        try:
            if self._producer is None:
                self._producer = AIOProducer(producer_config(self.settings), batch_size=1, buffer_timeout=0)
            value = block_value(until_ms, reason, self.settings.instance_id)
            await (await self._producer.produce(self.settings.topics.control, value=value, key=block_key(connection)))
        except Exception as exc:  # the local block holds; the others learn at their own 429
            log.warning("connection block not published", connection=connection, error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=5)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.close()

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
                        apply_control(state, msg.key(), msg.value())
                        changed = True
                if changed:
                    self.on_change(ControlState.of(state))
        finally:
            await consumer.close()
