"""The restore's fold: records of ``export.jobs`` read from the topic go into a partition
store, the last value per key winning and a tombstone deleting (design state-store §3.8).

Nothing is decoded in full: a peek at each value says whether the job is open and when
a finished one falls due, which is all the store's indexes need. The loader also keeps
what the restore hands the loop of each open job (its value, phase, due time, vendor and
status), bounded by the open jobs. Synchronous: the restore runs it in a thread, a batch
at a time, so no partition is ever held in memory.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from rocksdict import WriteBatch

from worker.codec import Codec
from worker.engine.model import Phase
from worker.errors import DecodeError
from worker.store import keys
from worker.store.partition import PartitionStore
from worker.store.peek import OpenPeek, PeekedOpen, open_peeker

# An open job as the restore found it: (value, phase, next_action_at_ms, vendor, status).
OpenJob = tuple[bytes, Phase, int, str, str]


@dataclass(slots=True)
class Folded:
    """What one fold did."""

    records: int = 0  # records read (superseded ones included)
    unreadable: dict[str, str] = field(default_factory=dict)  # request id -> why (deleted from the store)
    # A value framed with a registry schema id the codec has not fetched yet: fetch it
    # (``codec.decode_async``) and fold the same records again. Nothing was written.
    unknown_schema: bytes | None = None


class _Refold(Exception):
    """A value of a registry schema not fetched yet: the fold is abandoned unwritten."""

    def __init__(self, value: bytes) -> None:
        self.value = value


class StoreLoader:
    """Folds record batches of one partition into its store, and keeps its open jobs."""

    def __init__(self, store: PartitionStore, codec: Codec) -> None:
        self.store = store
        self._peek_value = open_peeker(codec)
        # By record key, the open jobs: the store's at the first fold (read in its
        # thread), then as the records change them.
        self._open: dict[bytes, OpenJob] | None = None

    @property
    def open_jobs(self) -> dict[bytes, OpenJob]:
        """The open jobs after the folds so far (``load_open`` or a fold reads them first)."""
        if self._open is None:
            raise RuntimeError("the open jobs are read at the first fold (or load_open)")
        return self._open

    def load_open(self, *, unreadable: Collection[bytes] = ()) -> Folded:
        """Read the open jobs the store already has (a warm store's; none in a wiped one).
        A value that cannot be read now is dropped from the store and reported."""
        folded = Folded()
        found: dict[bytes, OpenJob] = {}
        peek = self._peeker(unreadable)
        for key, value in self.store.open_values():
            if value is None:
                self.store.forget(key)  # an o/ entry without its job: nothing to keep
                continue
            try:
                found[key] = self._open_job(value, peek)
            except DecodeError as exc:
                if exc.reason_code == "unknown_schema" and value not in unreadable:
                    folded.unknown_schema = value
                    return folded
                folded.unreadable[key.decode("utf-8", "replace")] = str(exc)
                self.store.forget(key)
        self._open = found
        return folded

    def fold(
        self,
        latest: Mapping[bytes, bytes | None],
        next_offset: int,
        *,
        records: int | None = None,
        unreadable: Collection[bytes] = (),
        heads: Mapping[bytes, bytes] | None = None,
    ) -> Folded:
        """Fold the last value of each key in a batch of records (None: a tombstone) and
        move the store's offset to ``next_offset``, in one write. ``records``: how many
        records the batch had (superseded ones included; default one per key).
        ``unreadable``: values already known to be unreadable (a schema the registry
        does not have). ``heads``: by key, the ``OPEN_HEADER`` of those last values that
        have one (read instead of walking the value)."""
        if self._open is None:
            loaded = self.load_open(unreadable=unreadable)
            if loaded.unknown_schema is not None:
                return loaded
        folded = Folded(len(latest) if records is None else records)
        open_jobs, peek, done, intern = self.open_jobs, self._peeker(unreadable), Phase.DONE, sys.intern
        opened: list[tuple[bytes, OpenJob]] = []
        closed: list[bytes] = []
        job, open_, expiry_key = keys.JOB, keys.OPEN, keys.expiry_key

        # One pass: each value is peeked and written straight into the batch (no row per
        # record). An o/ entry is deleted only where there is one: a delete costs a put.
        head_of = (heads or {}).get

        def fill(batch: WriteBatch) -> None:
            put, delete = batch.put, batch.delete
            for key, value in latest.items():
                phase = None  # stays None for a tombstone, and for a value that cannot be read
                if value is not None:
                    try:
                        phase, due, vendor, status = peek(value, head_of(key))
                    except DecodeError as exc:
                        if exc.reason_code == "unknown_schema" and value not in unreadable:
                            raise _Refold(value) from None
                        # Deleted like a tombstone: an older readable value must not stay.
                        folded.unreadable[key.decode("utf-8", "replace")] = str(exc)
                if phase is None:
                    delete(job + key)
                elif phase is not done:
                    put(job + key, value)
                    put(open_ + key, b"")
                    opened.append((key, (value, phase, due, intern(vendor), intern(status))))
                    continue
                else:
                    put(job + key, value)
                    put(expiry_key(due, key), b"")
                if key in open_jobs:
                    delete(open_ + key)
                    closed.append(key)

        try:
            self.store.write_folded(fill, next_offset)
        except _Refold as refold:
            return Folded(unknown_schema=refold.value)  # nothing was written
        for key in closed:
            del open_jobs[key]
        open_jobs.update(opened)
        return folded

    def split_open(self, park_after_ms: int) -> tuple[dict[str, tuple[bytes, int, str, str]], list[tuple[str, bytes]]]:
        """The open jobs by request id, in two: those polling with a next poll after
        ``park_after_ms`` as (value, due, vendor, status), which the loop may keep
        undecoded, and the others as (request id, value), to decode."""
        parkable: dict[str, tuple[bytes, int, str, str]] = {}
        others: list[tuple[str, bytes]] = []
        active = Phase.ACTIVE
        for key, (value, phase, due, vendor, status) in self.open_jobs.items():
            request_id = key.decode("utf-8", "replace")
            if phase is active and due > park_after_ms:
                parkable[request_id] = (value, due, vendor, status)
            else:
                others.append((request_id, value))
        return parkable, others

    def _open_job(self, value: bytes, peek: OpenPeek) -> OpenJob:
        phase, due, vendor, status = peek(value)
        return (value, phase, due, sys.intern(vendor), sys.intern(status))

    def _peeker(self, unreadable: Collection[bytes]) -> OpenPeek:
        """``peek_open`` for this store's values; one already known to be unreadable is
        refused unread. With none known, the bare peek: a set would hash every value of
        the restore to find nothing."""
        if not unreadable:
            return self._peek_value
        peek_value = self._peek_value

        def peek(value: bytes, head: bytes | None = None, /) -> PeekedOpen:
            if value in unreadable:
                raise DecodeError("unknown_schema", "its writer schema is not known here")
            return peek_value(value, head)

        return peek
