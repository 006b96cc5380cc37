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
from worker.errors import DecodeError
from worker.store.partition import Entry, PartitionStore
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
        entries: list[Entry] = []
        for key, value in latest.items():
            request_id = key.decode("utf-8", "replace")
            if value is None:
                entries.append(Entry(request_id, None, False, 0))
                continue
            try:
                if value in unreadable:
                    raise DecodeError("unknown_schema", "its writer schema is not known here")
                peeked = peek(value, self._codec)
            except DecodeError as exc:
                if exc.reason_code == "unknown_schema" and value not in unreadable:
                    folded.unknown_schema = value
                    return folded
                folded.unreadable[request_id] = str(exc)
                entries.append(Entry(request_id, None, False, 0))  # an older readable value must not stay
                continue
            entries.append(Entry(request_id, value, peeked.open, peeked.next_action_at_ms))
        self.store.apply(entries, next_offset)
        return folded
