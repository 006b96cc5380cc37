"""Records the broker refused, remembered so that each affects only its own request.

The worker bounds every record it writes (``worker.limits``, ``max_record_bytes``), but
a broker or topic may accept less than configured. A refused record aborts its whole
transaction; without this the same request would be read again, refused again, and
stall every partition of the worker. After the resync the request is rejected at intake,
or the job is failed with a small state, with the reason said in its status event.
"""

from __future__ import annotations

from collections import OrderedDict

from confluent_kafka import KafkaError, KafkaException

from worker.runtime.outbox import Outgoing

# Delivery errors that are about the record itself, not the broker's health.
_REFUSED_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD})
# Remembered at most (oldest forgotten first): memory stays bounded whatever arrives.
MAX_REMEMBERED = 10_000


def refused_record(error: KafkaError) -> bool:
    """Whether a delivery error refuses the record itself (retrying cannot help)."""
    return error.code() in _REFUSED_CODES


class RecordsRefused(KafkaException):
    """A transaction failed because the broker refused some of its records."""

    def __init__(self, error: KafkaError, records: list[Outgoing]) -> None:
        super().__init__(error)
        self.records = records


class RefusedRecords:
    """Request ids whose job record, and input positions whose dead letter, were refused."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, str] = OrderedDict()  # request id -> why
        self._dead_letters: OrderedDict[tuple[int, int], str] = OrderedDict()  # (partition, offset) -> why

    def remember(self, records: list[Outgoing], dlq_topic: str, why: str) -> None:
        for out in records:
            if out.topic == dlq_topic:
                if out.origin_offset is not None:
                    _put(self._dead_letters, (out.partition, out.origin_offset), why)
            else:
                _put(self._jobs, out.key.decode("utf-8", "replace"), why)

    def job(self, request_id: str) -> str | None:
        """Why a record of this job was refused (kept: the transaction that deals with it
        may fail too, and then the same request is read again)."""
        return self._jobs.get(request_id) if self._jobs else None

    def dead_letter(self, partition: int, offset: int) -> str | None:
        return self._dead_letters.get((partition, offset)) if self._dead_letters else None


def _put(table: OrderedDict[object, str], key: object, why: str) -> None:
    table[key] = why
    table.move_to_end(key)
    while len(table) > MAX_REMEMBERED:
        table.popitem(last=False)
