"""What background tasks report to the loop. Vendor calls, restores and the control-topic
follower run beside the loop and never touch job state; they post here, and the loop
applies their reports in its next turn (confluent parallel-consumer's "work mailbox")."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from worker.control import ControlState
from worker.engine.model import Event
from worker.runtime.job_table import OpenJobs


@dataclass(slots=True)
class CallAnswered:
    """A vendor call ended: its answer (or failure) as an engine event for the job."""

    partition: int
    incarnation: int
    request_id: str
    event: Event
    span_id: str | None = None  # tracing on: the call's span (the job's next call links to it)


@dataclass(slots=True)
class RestoreDone:
    """The job states of some partitions were read back from export.jobs."""

    incarnations: dict[int, int]
    states: dict[int, OpenJobs]  # each partition's open jobs, decoded or parked
    seconds: float
    committed: dict[int, int]  # the group's committed input offset per partition (absent: none)


@dataclass(slots=True)
class ControlChanged:
    """An operator paused or resumed connections on the control topic."""

    state: ControlState


Report = CallAnswered | RestoreDone | ControlChanged


class Mailbox(asyncio.Queue[Report]):
    """The reports, and what the loop waits on while background work is under way:
    ``wake()`` (a transaction that finished, a stop) ends the wait at once, and so does
    each report when the waiter asks for it (calls wait for the slot an answer frees), so
    that answer is applied on the loop's next turn rather than after a fixed wait. Used
    from the loop's thread only, as any asyncio queue."""

    def __init__(self) -> None:
        super().__init__()
        self._waiter: asyncio.Future[None] | None = None
        self._reports_wake = True

    def put_nowait(self, item: Report) -> None:
        super().put_nowait(item)
        if self._reports_wake:
            self.wake()

    def wake(self) -> None:
        """End a ``wait`` under way (nothing when none is)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float, *, reports_wake: bool = True) -> None:
        """Until a report is here (``reports_wake``) or ``wake()`` is called, at most
        ``timeout_s``; at once when a report is already waiting and would wake it. Takes
        nothing from the queue."""
        if (reports_wake and not self.empty()) or timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._reports_wake = reports_wake
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._reports_wake = True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
