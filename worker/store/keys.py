"""Key layout of a partition store (design state-store §3.2): one column family, a
prefix per kind of key, so related keys sort together and a prefix is a range scan.

    j/<request id>                  the raw export.jobs value, framing included
    o/<request id>                  b"": the job is open (phase is not DONE)
    x/<due ms, 8 bytes BE><id>      b"": a finished job falls due (link expiry, retention)
    m/offset  m/written_at          8-byte big-endian numbers, written with every batch
    m/format                        b"1", at creation
"""

from __future__ import annotations

JOB = b"j/"
OPEN = b"o/"
EXPIRY = b"x/"
META_OFFSET = b"m/offset"
META_WRITTEN_AT = b"m/written_at"
META_FORMAT = b"m/format"
FORMAT = b"1"

_DUE_BYTES = 8
_DUE_MAX = (1 << 63) - 1  # an Avro long


def be64(number: int) -> bytes:
    return number.to_bytes(_DUE_BYTES, "big")


def from_be64(data: bytes) -> int:
    return int.from_bytes(data, "big")


def job_key(key: bytes) -> bytes:
    """``key``: the request id as the record key carries it (UTF-8)."""
    return JOB + key


def open_key(key: bytes) -> bytes:
    return OPEN + key


def due_of(next_action_at_ms: int) -> int:
    """A due time as the index orders it: a negative one (never written, but an Avro long
    allows it) is simply already due."""
    return min(max(next_action_at_ms, 0), _DUE_MAX)


def expiry_key(due_ms: int, key: bytes) -> bytes:
    # One call per finished job on a restore's fold: the usual due time skips due_of.
    due = due_ms if 0 <= due_ms <= _DUE_MAX else due_of(due_ms)
    return EXPIRY + due.to_bytes(_DUE_BYTES, "big") + key


def parse_expiry_key(key: bytes) -> tuple[int, str]:
    due = key[len(EXPIRY) : len(EXPIRY) + _DUE_BYTES]
    return from_be64(due), key[len(EXPIRY) + _DUE_BYTES :].decode()


def expiry_bound(until_ms: int) -> bytes:
    """The first ``x/`` key due after ``until_ms``: an exclusive upper bound."""
    return EXPIRY + be64(due_of(until_ms) + 1)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (``b"o/"`` -> ``b"o0"``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])
