"""Retention without a timer per finished job (design state-store §3.7): finished jobs
live in their partition's store, indexed by when they fall due (link expiry, end of
retention). Each turn the sweeper takes a bounded slice of what is due, across the
active partitions, and steps those jobs like a timer would: the engine publishes
EXPIRED, or forgets the job (a tombstone). Entries that no longer match the stored
state (ghosts, left behind when a job moved on) are dropped."""

from __future__ import annotations

import structlog

from worker.codec import Codec
from worker.engine.model import Phase, TimerFired
from worker.errors import DecodeError
from worker.observability import Metrics
from worker.runtime.clients import Clock
from worker.runtime.partitions import Partitions
from worker.runtime.stepper import Stepper
from worker.store import StoreError, peek

log = structlog.get_logger("export_worker")

# Expiry entries handled per sweep, over all partitions: bounds a turn's work (each is a
# store read and, when due, a decode and an engine step).
SWEEP_SLICE = 500
# How often to look when the last sweep found less than a slice.
SWEEP_EVERY_S = 0.5


class Sweeper:
    def __init__(self, *, partitions: Partitions, stepper: Stepper, codec: Codec, clock: Clock, metrics: Metrics):
        self._partitions = partitions
        self._stepper = stepper
        self._codec = codec
        self._clock = clock
        self._metrics = metrics
        # Where each partition's pass stands (by incarnation): entries already handed to
        # the engine stay in the index until their new state is committed, and are passed.
        self._cursors: dict[tuple[int, int], tuple[int, str]] = {}
        self._turn = 0
        self._next_at = 0.0
        self.failed: set[int] = set()  # partitions whose store failed: to rebuild

    def run(self) -> None:
        mono = self._clock.monotonic()
        if mono < self._next_at:
            return
        now = self._clock.now_ms()
        budget = SWEEP_SLICE
        numbers = sorted(self._partitions)
        self._turn += 1
        oldest: int | None = None
        for i in range(len(numbers)):
            if budget <= 0:
                break
            number = numbers[(self._turn + i) % len(numbers)]
            part = self._partitions[number]
            store = self._stepper.store_of(part) if part.active else None
            if store is None:
                continue
            cursor_key = (number, part.incarnation)
            try:
                due = store.expiring(now, budget, after=self._cursors.get(cursor_key))
                if len(due) < budget:
                    self._cursors.pop(cursor_key, None)  # the pass is over: start again next time
                elif due:
                    self._cursors[cursor_key] = due[-1]
                budget -= len(due)
                for due_ms, request_id in due:
                    oldest = due_ms if oldest is None else min(oldest, due_ms)
                    self._sweep(number, due_ms, request_id)
            except StoreError as exc:
                self._metrics.store_failures.inc()
                log.error("partition store unreadable while sweeping; rebuilding it", partition=number, error=str(exc))
                self.failed.add(number)
        self._metrics.retention_lag.set(0 if oldest is None else max(0.0, (now - oldest) / 1000))
        self._next_at = mono if budget <= 0 else mono + SWEEP_EVERY_S

    def _sweep(self, number: int, due_ms: int, request_id: str) -> None:
        part = self._partitions[number]
        if request_id in part.jobs:
            return  # hot: its committed state gets its own entry
        store = self._stepper.store_of(part)
        assert store is not None
        value = store.get(request_id)
        try:
            peeked = None if value is None else peek(value, self._codec)
        except DecodeError as exc:
            log.error("stored job state unreadable; dropped from the expiry index", key=request_id, error=str(exc))
            peeked = None
        if peeked is None or peeked != (Phase.DONE, due_ms):
            store.drop_index(due_ms, request_id)  # a ghost: the job moved on or is gone
            self._metrics.swept.labels("ghost").inc()
            return
        self._stepper.apply(part, request_id, TimerFired(), persist_changes=True)
        self._metrics.swept.labels("stepped").inc()
