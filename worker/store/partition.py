"""One RocksDB per owned ``export.jobs`` partition: a materialisation of the topic up
to a changelog offset, never ahead of it (design state-store §3.1-3.2).

The store folds in what it is given and decodes nothing: the writer and the restorer
build the ``Entry``s (whether a job is open, when a finished one falls due). The offset
goes into the same WriteBatch as the data, so data and offset cannot disagree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rocksdict import Rdict, ReadOptions, WriteBatch

from worker.store import keys
from worker.store.errors import StoreError, StoreUntrusted, translate
from worker.store.options import StoreMemory


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Entry(NamedTuple):
    """One committed ``export.jobs`` record, as the store needs it. ``apply`` takes any
    4-tuple of this shape: a restore builds one per record, and a plain tuple costs a
    quarter of a NamedTuple's construction."""

    key: bytes  # the record key: the request id, UTF-8
    value: bytes | None  # None: a tombstone
    open: bool  # phase is not DONE
    due_ms: int  # next_action_at_ms: where a finished job goes in the expiry index


@dataclass(frozen=True, slots=True)
class StoreStats:
    keys: int  # RocksDB's estimate
    sst_bytes: int
    memtable_bytes: int


class PartitionStore:
    """The store of one partition. Synchronous: small work runs on the loop, restore
    batches in a thread. Use ``open``."""

    def __init__(self, db: Rdict, path: Path, partition: int, *, clock: Callable[[], int] = wall_ms) -> None:
        self.path = path
        self.partition = partition
        self._db: Rdict | None = db
        self._clock = clock
        # A restore writes from a thread while the loop may close the store (a revoke):
        # RocksDB must never be closed under a running call.
        self._lock = threading.Lock()
        self.offset: int | None = self._number(keys.META_OFFSET)  # everything below it is folded in
        self.written_at_ms: int | None = self._number(keys.META_WRITTEN_AT)
        self.format: bytes | None = self._read(keys.META_FORMAT)

    @classmethod
    def open(
        cls, path: Path, partition: int, memory: StoreMemory, *, clock: Callable[[], int] = wall_ms
    ) -> PartitionStore:
        """Open or create the store at ``path`` (StoreCorrupt, StoreLocked, StoreError)."""
        store = cls(memory.open(path), path, partition, clock=clock)
        if store.format is None and store.offset is None:
            store._write(lambda batch: batch.put(keys.META_FORMAT, keys.FORMAT), "create")
            store.format = keys.FORMAT
        return store

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise StoreUntrusted(f"store {self.path} is closed")
        return self._db

    def get(self, request_id: str) -> bytes | None:
        """The raw committed value of a job, or None when the store has none."""
        return self._read(keys.job_key(request_id.encode()))

    def apply(self, entries: Iterable[tuple[bytes, bytes | None, bool, int]], offset: int) -> None:
        """Fold committed records in and move the offset to ``offset`` (the next one to
        read), in one WriteBatch (``write_folded``)."""

        def fill(batch: WriteBatch) -> None:
            put, delete = batch.put, batch.delete
            for key, value, is_open, due_ms in entries:
                if is_open and value is not None:
                    put(keys.JOB + key, value)
                    put(keys.OPEN + key, b"")
                    continue
                delete(keys.OPEN + key)
                if value is None:
                    delete(keys.JOB + key)
                else:
                    put(keys.JOB + key, value)
                    put(keys.expiry_key(due_ms, key), b"")

        self.write_folded(fill, offset)

    def write_folded(self, fill: Callable[[WriteBatch], None], offset: int) -> None:
        """Write what ``fill`` puts in a batch (records folded in by the caller, in the
        layout of ``keys``) and move the offset to ``offset`` (the next one to read), in
        one WriteBatch. An offset below the stored one is refused: the store would claim
        records it never saw. Whatever ``fill`` raises leaves the store as it was."""
        if self.offset is not None and offset < self.offset:
            raise StoreUntrusted(f"offset {offset} is below the store's {self.offset} (partition {self.partition})")
        now = self._clock()

        def with_offset(batch: WriteBatch) -> None:
            fill(batch)
            batch.put(keys.META_OFFSET, keys.be64(offset))
            batch.put(keys.META_WRITTEN_AT, keys.be64(now))

        self._write(with_offset, "apply")
        self.offset, self.written_at_ms = offset, now

    def forget(self, key: bytes) -> None:
        """Delete a job and its ``o/`` entry (an unreadable value found by a restore).
        Local only: the offset does not move, and a rebuild from the topic drops the
        same value."""

        def fill(batch: WriteBatch) -> None:
            batch.delete(keys.JOB + key)
            batch.delete(keys.OPEN + key)

        self._write(fill, "forget in")

    def open_ids(self) -> list[str]:
        """Request ids of the open jobs, in key order (bounded by the open jobs)."""
        return [key.decode() for key in self.open_keys()]

    def open_keys(self) -> list[bytes]:
        """Record keys of the open jobs, in key order (bounded by the open jobs)."""
        start = len(keys.OPEN)
        with self._lock:
            return [key[start:] for key in self._scan(keys.OPEN, keys.prefix_end(keys.OPEN))]

    def open_values(self) -> list[tuple[bytes, bytes | None]]:
        """(record key, value) of the open jobs, in key order (bounded by the open jobs);
        None for an ``o/`` entry without a job (only a damaged store has one)."""
        found = self.open_keys()
        return list(zip(found, self._read_many([keys.JOB + key for key in found]), strict=True))

    def expiring(self, until_ms: int, limit: int, *, after: tuple[int, str] | None = None) -> list[tuple[int, str]]:
        """At most ``limit`` (due ms, request id) of the expiry index due at or before
        ``until_ms``, earliest first, starting past ``after`` when given. Entries may be
        ghosts: the caller checks them."""
        found: list[tuple[int, str]] = []
        if limit <= 0:
            return found
        lower = keys.EXPIRY if after is None else keys.expiry_key(after[0], after[1].encode()) + b"\x00"
        with self._lock:
            for key in self._scan(lower, keys.expiry_bound(until_ms)):
                found.append(keys.parse_expiry_key(key))
                if len(found) >= limit:
                    break
        return found

    def drop_index(self, due_ms: int, request_id: str) -> None:
        """Delete one expiry entry (a ghost, or one a hot job supersedes). Local only:
        the offset does not move."""
        self._write(lambda batch: batch.delete(keys.expiry_key(due_ms, request_id.encode())), "drop index")

    def stats(self) -> StoreStats:
        db = self.db

        def prop(name: str) -> int:
            return int(db.property_int_value(name) or 0)

        return StoreStats(
            keys=prop("rocksdb.estimate-num-keys"),
            sst_bytes=prop("rocksdb.total-sst-files-size"),
            memtable_bytes=prop("rocksdb.cur-size-all-mem-tables"),
        )

    def close(self) -> None:
        """Close; background compaction is cancelled first so a rebalance does not wait
        for it. Closing twice is harmless."""
        with self._lock:
            db, self._db = self._db, None
        if db is None:
            return
        try:
            with self._lock:
                db.cancel_all_background(True)
                db.close()
        except Exception as exc:
            # close() flushes the memtables, which RocksDB refuses once background work is
            # cancelled; the DB is released all the same and the WAL replays them on open.
            if not str(exc).startswith("Shutdown in progress"):
                raise translate(exc, f"cannot close store {self.path}") from exc

    # -- helpers ----------------------------------------------------------------------
    def _read(self, key: bytes) -> bytes | None:
        try:
            with self._lock:
                value = self.db.get(key)
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc, f"cannot read store {self.path}") from exc
        return value

    def _read_many(self, wanted: list[bytes]) -> list[bytes | None]:
        """The values of ``wanted``, in order (None where absent): one multi-get, which
        costs a third of a get per key from Python (a warm takeover reads every open job)."""
        if not wanted:
            return []
        try:
            with self._lock:
                values: list[bytes | None] = self.db.get(wanted)
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc, f"cannot read store {self.path}") from exc
        return values

    def _number(self, key: bytes) -> int | None:
        value = self._read(key)
        return None if value is None else keys.from_be64(value)

    def _write(self, fill: Callable[[WriteBatch], None], what: str) -> None:
        batch = WriteBatch(raw_mode=True)
        fill(batch)
        try:
            with self._lock:
                self.db.write(batch)
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc, f"cannot {what} store {self.path}") from exc

    def _scan(self, lower: bytes, upper: bytes) -> Iterator[bytes]:
        """Keys in [lower, upper). rocksdict's iterators end quietly at a read error, so
        the status is checked at the end: a corrupt block must not look like the end."""
        read = ReadOptions()
        read.set_iterate_upper_bound(upper)
        try:
            it = self.db.iter(read)
            it.seek(lower)
            while it.valid():
                yield it.key()
                it.next()
            it.status()
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc, f"cannot scan store {self.path}") from exc
