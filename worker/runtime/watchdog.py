"""Is the loop alive? Turn times for /healthz, stacks when it stalls, consumer lag."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import traceback
from typing import Any

import structlog

from worker.observability import Metrics
from worker.runtime.clients import GroupConsumer
from worker.runtime.partitions import Partitions

log = structlog.get_logger("export_worker")

# A turn longer than this is logged with every task's and thread's stack (once per period).
STALL_LOG_AFTER_S = 30.0
CHECK_EVERY_S = 5.0
LAG_EVERY_S = 5.0


class LoopWatchdog:
    """Args:
    stall_timeout_s: past this without a turn, /healthz fails (a supervisor restarts the
        process; the next owner resumes from Kafka).
    """

    def __init__(self, *, stall_timeout_s: float, partitions: Partitions, metrics: Metrics) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._partitions = partitions
        self._metrics = metrics
        self.last_turn = time.monotonic()
        self.started = False
        self._lag_checked = 0.0
        self._task: asyncio.Task[None] | None = None

    def turn(self) -> None:
        """The loop starts a turn."""
        self.last_turn = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_turn
        if self.started and stalled > self.stall_timeout_s:
            return False, f"worker loop stalled for {stalled:.0f} s"
        return True, "ok"

    def watch(self, loop_task: asyncio.Task[Any]) -> None:
        self._task = asyncio.create_task(self._watch(loop_task))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self, loop_task: asyncio.Task[Any]) -> None:
        """Say where the loop is stuck when a turn takes far too long."""
        warned = 0.0
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            stalled = time.monotonic() - self.last_turn
            if stalled > STALL_LOG_AFTER_S and time.monotonic() - warned > STALL_LOG_AFTER_S:
                warned = time.monotonic()
                log.error("worker loop stalled", seconds=round(stalled), where=_where(loop_task), waiting_on=_stacks())

    async def measure_lag(self, consumer: GroupConsumer) -> None:
        """Consumer lag per owned partition from the watermarks of the last fetch (no
        round trip), every few seconds."""
        if time.monotonic() - self._lag_checked <= LAG_EVERY_S:
            return
        self._lag_checked = time.monotonic()
        ready = self._partitions.ready_partitions()
        if not ready:
            return
        for tp in await consumer.position(ready):
            _low, high = await consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                self._metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - tp.offset))

    def forget(self, numbers: set[int]) -> None:
        for n in numbers:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(str(n))


def _where(task: asyncio.Task[Any]) -> str:
    return " -> ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in task.get_stack(limit=16))


def _stacks() -> dict[str, str]:
    """Every task's and thread's innermost frames: what a stalled loop is waiting on."""
    found = {f"task {t.get_name()}": _where(t) for t in asyncio.all_tasks() if not t.done()}
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        frames = traceback.extract_stack(frame)[-6:]
        found[f"thread {names.get(ident, ident)}"] = " -> ".join(f"{f.name}:{f.lineno}" for f in frames)
    return found
