"""Intake backpressure: stop reading new requests while this worker holds too many open
jobs, and start again once they have drained (design: docs/design/state-store.md §3.10).

Every open job costs memory until it ends, and the vendor decides when that is. The gate
bounds how many the worker takes on: once per turn (``Worker._turn``, after the steps
and timers) it compares the open jobs of every owned partition with the limit, with
hysteresis so that it does not flap on every finished job:

* open ≥ ``max_open`` while reading: the ready ``export.requests`` partitions are paused;
* open ≤ ``low_water`` while paused: the ready partitions are resumed (a partition still
  restoring stays paused: its restore resumes it, and only if the gate is open then).

Only the reading of new requests stops. The loop keeps turning and calling ``consume()``
(rebalance callbacks, liveness), and vendor calls, timers and commits go on, which is
what drains the open jobs. Readiness (``/readyz``) does not depend on the gate.

The limit can be overshot by the requests of one consumed batch (``consume_batch``:
the check runs after they are taken), and by a takeover, whose restored jobs cannot be
refused: intake then stays paused until they drain below the low water mark.
"""

from __future__ import annotations

import structlog

from worker.config import Settings
from worker.observability import Metrics
from worker.runtime.clients import GroupConsumer
from worker.runtime.fetch_start import resume_fetching
from worker.runtime.partitions import Partitions

log = structlog.get_logger("export_worker")


def low_water_mark(max_open: int, fraction: float) -> int:
    """``int(max_open * fraction)``, robust to binary fractions (100 x 0.29 is 28.999...)."""
    return int(max_open * fraction + 1e-9)


class IntakeGate:
    """Whether new requests are read, by the number of open jobs, with hysteresis.

    Args:
        max_open: open jobs at which reading pauses; 0 means no limit (never pauses).
        low_water: open jobs at or below which reading resumes; below ``max_open``.
        metrics: where the gate's gauges and counter go; a private registry when omitted.
    """

    def __init__(self, max_open: int, low_water: int, *, metrics: Metrics | None = None) -> None:
        if max_open < 0:
            raise ValueError(f"max_open must be 0 (no limit) or positive, not {max_open}")
        if max_open and not 0 <= low_water < max_open:
            raise ValueError(f"low_water must be in [0, max_open={max_open}), not {low_water}")
        self.max_open = max_open
        self.low_water = low_water if max_open else 0
        self.closed = False
        self._metrics = metrics or Metrics()
        self._metrics.open_jobs_limit.set(max_open)
        self._metrics.intake_paused.set(0)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> IntakeGate:
        max_open = settings.max_open_jobs
        return cls(max_open, low_water_mark(max_open, settings.intake_low_water), metrics=metrics)

    @property
    def unlimited(self) -> bool:
        return self.max_open == 0

    def may_resume(self) -> bool:
        """Whether a partition that has just become ready may be read (``Restorer.install``):
        not while the gate is closed; reopening resumes it."""
        return not self.closed

    def decide(self, open_jobs: int) -> bool | None:
        """What the gate should do at this many open jobs: True to close, False to reopen,
        None to stay as it is. Changes nothing."""
        if self.unlimited:
            return None
        if not self.closed and open_jobs >= self.max_open:
            return True
        if self.closed and open_jobs <= self.low_water:
            return False
        return None

    async def check(self, open_jobs: int, consumer: GroupConsumer, partitions: Partitions) -> None:
        """Once per turn: pause or resume the ready request partitions if the open jobs
        crossed a mark."""
        change = self.decide(open_jobs)
        if change is None:
            return
        ready = partitions.ready_partitions()
        numbers = sorted(tp.partition for tp in ready)
        if change:
            if ready:
                await consumer.pause(ready)
            self.closed = True
            self._metrics.intake_paused.set(1)
            self._metrics.intake_pauses.inc()
            log.warning(
                "intake paused",
                open_jobs=open_jobs,
                limit=self.max_open,
                resume_at=self.low_water,
                partitions=numbers,
            )
        else:
            await resume_fetching(consumer, ready)
            self.closed = False
            self._metrics.intake_paused.set(0)
            log.warning("intake resumed", open_jobs=open_jobs, limit=self.max_open, partitions=numbers)
