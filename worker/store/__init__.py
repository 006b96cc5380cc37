"""On-disk state of owned ``export.jobs`` partitions (design ``docs/design/state-store.md``):
one RocksDB per partition holding every job's committed value, so finished jobs need
not stay in memory. A cache of the topic: it is never ahead of it and can always be
rebuilt from it."""

from __future__ import annotations

from worker.store.checkpoint import Checkpoint, LogFacts, Trust, Wipe
from worker.store.cleanup import Cleaned, CleanupPolicy
from worker.store.errors import StoreCorrupt, StoreError, StoreLocked, StoreUntrusted
from worker.store.options import StoreMemory, StoreOptions
from worker.store.partition import Entry, PartitionStore, StoreStats
from worker.store.peek import Peeked, peek
from worker.store.stores import Opened, StoreSet

__all__ = [
    "Checkpoint",
    "Cleaned",
    "CleanupPolicy",
    "Entry",
    "LogFacts",
    "Opened",
    "PartitionStore",
    "Peeked",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "StoreMemory",
    "StoreOptions",
    "StoreSet",
    "StoreStats",
    "StoreUntrusted",
    "Trust",
    "Wipe",
    "peek",
]
