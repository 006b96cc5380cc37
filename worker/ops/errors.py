"""Errors of operator commands; each becomes one line on stderr and an exit code.

ExportWorkerError
└── OperatorError           exit 1
    ├── UsageError          exit 2: bad or conflicting arguments
    ├── TopicMissing        a topic the command reads or writes does not exist
    └── CheckpointError     unreadable checkpoint, or made with other arguments
"""

from __future__ import annotations

from worker.errors import ExportWorkerError


class OperatorError(ExportWorkerError):
    """An operator command cannot go on; the message says why in one line."""

    exit_code = 1


class UsageError(OperatorError):
    """Arguments that are wrong or do not fit together."""

    exit_code = 2


class TopicMissing(OperatorError):
    """A topic the command needs does not exist on the cluster."""


class CheckpointError(OperatorError):
    """The checkpoint file cannot be used for this run."""
