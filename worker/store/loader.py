"""The restore's fold: records of ``export.jobs`` read from the topic go into a partition
store, the last value per key winning and a tombstone deleting (design state-store §3.8).

Nothing is decoded in full: a peek at each value says whether the job is open and when
a finished one falls due, which is all the store's indexes need. Synchronous: the
restore runs it in a thread, a batch at a time, so no partition is ever held in memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from worker.codec import Codec
from worker.engine.model import Phase
from worker.errors import DecodeError
from worker.store.partition import PartitionStore
from worker.store.peek import peek


@dataclass(slots=True)
class Folded:
    """What one fold did."""

    records: int = 0  # records read (superseded ones included)
    unreadable: dict[str, str] = field(default_factory=dict)  # request id -> why (deleted from the store)
    # A value framed with a registry schema id the codec has not fetched yet: fetch it
    # (``codec.decode_async``) and fold the same records again. Nothing was written.
    unknown_schema: bytes | None = None


class StoreLoader:
    """Folds record batches of one partition into its store."""

    def __init__(self, store: PartitionStore, codec: Codec) -> None:
        self.store = store
        self._codec = codec
        # Keys with an o/ entry (bounded by the open jobs), read at the first fold (in
        # its thread): a finished job deletes one only if it has one.
        self._open_keys: set[bytes] | None = None

    def fold(
        self,
        records: Iterable[tuple[int, bytes, bytes | None]],
        next_offset: int,
        *,
        unreadable: Collection[bytes] = (),
    ) -> Folded:
        """Fold ``(offset, key, value)`` records in offset order, and move the store's
        offset to ``next_offset``, in one write. ``unreadable``: values already known to
        be unreadable (a schema the registry does not have)."""
        folded = Folded()
        latest: dict[bytes, bytes | None] = {}
        for _offset, key, value in records:
            folded.records += 1
            latest[key] = value  # a later record of the same key supersedes it unread
        rows: list[tuple[bytes, bytes | None, bool, int]] = []  # Entry's shape, built cheaper
        add, codec, done = rows.append, self._codec, Phase.DONE
        for key, value in latest.items():
            if value is None:
                add((key, None, False, 0))
                continue
            try:
                if value in unreadable:
                    raise DecodeError("unknown_schema", "its writer schema is not known here")
                phase, due = peek(value, codec)
            except DecodeError as exc:
                if exc.reason_code == "unknown_schema" and value not in unreadable:
                    folded.unknown_schema = value
                    return folded
                folded.unreadable[key.decode("utf-8", "replace")] = str(exc)
                add((key, None, False, 0))  # an older readable value must not stay
                continue
            add((key, value, phase is not done, due))
        if self._open_keys is None:
            self._open_keys = set(self.store.open_keys())
        self.store.apply(rows, next_offset, open_keys=self._open_keys)
        return folded
