"""Bounds on what the outside world controls, in one place.

Requests and vendor answers are hostile: every text a vendor sends that the worker keeps
(in a job's state, status and file events) is clipped or refused at the boundary where it
enters, so a job's state record can only grow by a known amount after it was accepted.
Ingest uses that to refuse, at the door, a request whose state could not be written.
Configurable limits (request size, record size, Retry-After, answer size) are settings;
these are the fixed ones.
"""

from __future__ import annotations

# The largest record the worker writes, by default: below the producer's own limit
# (librdkafka message.max.bytes, 1,000,000) and Kafka's default max.message.bytes.
DEFAULT_MAX_RECORD_BYTES = 786_432

# Vendor answers (settings EXPORT_WORKER_MAX_ANSWER_BYTES, EXPORT_WORKER_MAX_RETRY_AFTER_S).
DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a longer answer body is refused, unread
MAX_ANSWER_BYTES_CEILING = 256 * 1024 * 1024
MIN_ANSWER_BYTES = 64 * 1024
DEFAULT_MAX_RETRY_AFTER_S = 600.0  # a longer Retry-After is cut to this; the job's failure budget applies
MAX_RETRY_AFTER_CEILING_S = 86_400.0
# An answer's status line and headers (``worker.vendors.transport``): past either bound
# the answer is refused, unread.
MAX_ANSWER_HEAD_BYTES = 64 * 1024
MAX_ANSWER_HEADERS = 128

# Texts from vendor answers kept in a job's state (UTF-8 bytes).
MAX_VENDOR_STATUS_BYTES = 256  # a vendor's own status name: longer ones are clipped
MAX_VENDOR_JOB_ID_BYTES = 512  # a job id: a longer one is refused (clipping would poll the wrong job)
MAX_ERROR_CODE_BYTES = 64
MAX_ERROR_MESSAGE_BYTES = 2_048  # error texts are clipped
MAX_FILE_URL_BYTES = 8_192  # a download link: a longer one is refused
MAX_FILE_FORMAT_BYTES = 64
MAX_CHECKSUM_BYTES = 128  # a longer sha256 is dropped

# The most vendor answers can add to a job's state record after it was accepted: the
# fields above, each with its Avro length prefix and union index.
VENDOR_FIELDS_BOUND = (
    MAX_VENDOR_STATUS_BYTES
    + MAX_VENDOR_JOB_ID_BYTES
    + MAX_ERROR_CODE_BYTES
    + MAX_ERROR_MESSAGE_BYTES
    + MAX_FILE_URL_BYTES
    + MAX_FILE_FORMAT_BYTES
    + MAX_CHECKSUM_BYTES
    + 16 * 8
)

# The headers of a state record on export.jobs (``worker.store.peek.OPEN_HEADER``: its
# name, 12 bytes, vendor and status of at most 255 bytes each, else it is left out).
STATE_HEADERS_BOUND = 600

# Texts of a rejected request kept in its REJECTED state and status (tenant, connection,
# correlation id): clipped, so the rejection of any request fits in a record (the dead
# letter carries the request as it came).
# W3C trace context read from a request's headers (tracing on): a traceparent is 55
# characters or it is ignored; a longer tracestate is dropped (512 is what the
# specification asks every vendor to propagate).
TRACEPARENT_CHARS = 55
MAX_TRACESTATE_BYTES = 512
TRACE_CONTEXT_BOUND = TRACEPARENT_CHARS + MAX_TRACESTATE_BYTES + 16 + 16  # + the last span id, prefixes

MAX_REJECTED_TEXT_BYTES = 1_024

# Dead letters carry the refused record's key, value and headers: bounded too, so the
# dead letter of any input fits in a record.
MAX_DEAD_LETTER_KEY_BYTES = 1_024
MAX_DEAD_LETTER_HEADERS = 64
MAX_DEAD_LETTER_HEADER_BYTES = 65_536  # all header keys and values together
MAX_REASON_BYTES = 4_096
# What a dead letter adds to the (already bounded) value it carries.
DEAD_LETTER_OVERHEAD = MAX_DEAD_LETTER_KEY_BYTES + MAX_DEAD_LETTER_HEADER_BYTES + MAX_REASON_BYTES + 4_096


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    if len(text) * 4 <= max_bytes:  # fast path: cannot be too long
        return text
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def utf8_len(text: str | None) -> int:
    return 0 if text is None else len(text.encode())
