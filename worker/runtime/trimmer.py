"""Hands freed heap memory back to the OS every ``memory_trim_s`` (``worker.allocator``),
in a thread so the loop never waits for it, and counts what it gave back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from worker import allocator
from worker.observability import Metrics

log = structlog.get_logger("export_worker.memory")


class MemoryTrimmer:
    def __init__(
        self,
        interval_s: float,
        metrics: Metrics,
        monotonic: Callable[[], float],
        trim: Callable[[], bool] = allocator.trim,
        resident: Callable[[], int] = allocator.resident_bytes,
    ) -> None:
        self.interval_s = interval_s
        self._metrics = metrics
        self._monotonic = monotonic
        self._trim = trim
        self._resident = resident
        self._last = monotonic()
        self._task: asyncio.Task[None] | None = None

    def run_when_due(self) -> None:
        """Start a trim if one is due and none is running."""
        if self.interval_s <= 0 or (self._task is not None and not self._task.done()):
            return
        now = self._monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self._task = asyncio.create_task(asyncio.to_thread(self._trim_once))

    def _trim_once(self) -> None:
        before = self._resident()
        released = max(0, before - self._resident()) if self._trim() else 0
        self._metrics.memory_trims.inc()
        self._metrics.memory_trimmed.inc(released)
        log.debug("heap memory given back", released_bytes=released)

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
