"""Errors of the on-disk state store, under the project's root error.

    ExportWorkerError
    └── StoreError              a store cannot be read or written (I/O error, disk full)
        ├── StoreCorrupt        RocksDB reports corruption: wipe and rebuild from the topic
        ├── StoreLocked         another process holds the store's lock: fatal, never wiped
        └── StoreUntrusted      a store that must not be used (caller error or a refused offset)

None is retriable in place: the store is a cache of ``export.jobs``, so the answer to
any of them is to stop believing the store and rebuild it from the topic.
"""

from __future__ import annotations

from worker.errors import ExportWorkerError


class StoreError(ExportWorkerError):
    """A store could not be read or written."""


class StoreCorrupt(StoreError):
    """RocksDB found corrupt files: the store is wiped and rebuilt from the topic."""


class StoreLocked(StoreError):
    """Another process holds the store. With one state dir per pod this cannot happen,
    so it is fatal rather than a silent wipe of someone else's store."""


class StoreUntrusted(StoreError):
    """The store cannot be used as it is (e.g. an offset below the one it holds)."""


def translate(exc: Exception, what: str) -> StoreError:
    """The one place rocksdict's plain ``Exception``s (RocksDB status texts) become ours."""
    text = str(exc)
    if "Corruption" in text:
        return StoreCorrupt(f"{what}: {text}")
    if text.startswith("IO error") and "lock" in text.lower():
        return StoreLocked(f"{what}: {text}")
    return StoreError(f"{what}: {text}")
