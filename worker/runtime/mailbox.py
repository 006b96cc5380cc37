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
Mailbox = asyncio.Queue[Report]
