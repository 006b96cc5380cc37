"""export-worker: Kafka event-driven workers for vendor export jobs."""

from worker.codec import Codec, SchemaSet
from worker.config import ConnectionConfig, Settings, TopicSettings
from worker.engine import JobState, Phase, Status
from worker.errors import ExportWorkerError
from worker.runtime import Worker
from worker.version import __version__

__all__ = [
    "Codec",
    "ConnectionConfig",
    "ExportWorkerError",
    "JobState",
    "Phase",
    "SchemaSet",
    "Settings",
    "Status",
    "TopicSettings",
    "Worker",
    "__version__",
]
