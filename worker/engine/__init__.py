"""The pure core: job state, events, effects and the state machine. No I/O, no clock."""

from worker.engine.machine import step
from worker.engine.model import (
    Announce,
    CallKind,
    CallVendor,
    Emit,
    ErrorInfo,
    FileInfo,
    JobState,
    Phase,
    PublishStatus,
    Status,
)

__all__ = [
    "Announce",
    "CallKind",
    "CallVendor",
    "Emit",
    "ErrorInfo",
    "FileInfo",
    "JobState",
    "Phase",
    "PublishStatus",
    "Status",
    "step",
]
