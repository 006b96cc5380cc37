"""Bytes from export.requests -> a validated request, or a rejection with a reason.

Nothing here raises for bad input: every outcome is a value the runtime turns into
state, a status event and (for rejections) a dead letter.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass
from typing import Any

from worker.codec import Codec, epoch_ms
from worker.config import ConnectionConfig
from worker.engine.model import NO_LABELS, ErrorInfo, RequestInfo, RequestRejected
from worker.errors import ConfigError, DecodeError, InvalidRequest
from worker.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_REJECTED_TEXT_BYTES,
    STATE_HEADERS_BOUND,
    VENDOR_FIELDS_BOUND,
    clip,
)
from worker.records import state_size_bound
from worker.redaction import redact_text
from worker.vendor_registry import JOB_VENDORS
from worker.vendors import validator

CANCEL = "CancelExport"
MAX_ID_LENGTH = 256


def rejected_event(request: RequestInfo, error: ErrorInfo) -> RequestRejected:
    """The REJECTED event of a request, its texts clipped: what a request is rejected
    for may be its size, and its rejection must still fit in a record."""

    def kept(text: str) -> str:
        return clip(text, MAX_REJECTED_TEXT_BYTES)

    return RequestRejected(
        request_id=request.request_id,
        tenant=kept(request.tenant),
        connection=kept(request.connection),
        vendor=request.vendor,
        partition=request.partition,
        offset=request.offset,
        error=ErrorInfo(error.code, clip(error.message, MAX_ERROR_MESSAGE_BYTES), error.retryable),
        correlation_id=None if request.correlation_id is None else kept(request.correlation_id),
        trace=request.trace,
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Goes to the DLQ; ``event`` is set when the request id is known, so the producer
    also gets a REJECTED status."""

    reason_code: str
    reason: str
    event: RequestRejected | None = None


def jsonable(value: Any) -> Any:
    """Decoded Avro -> JSON-ready: datetimes to epoch ms, union pairs to tagged dicts."""
    if isinstance(value, dt.datetime):
        return epoch_ms(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {"type": value[0].rsplit(".", 1)[-1], **jsonable(value[1])}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


class Ingest:
    """Decode and validate requests against the configured connections.

    Args:
        codec: the wire codec.
        connections: connection name -> config (the vendor of each).
        max_bytes: larger values are refused as ``oversize``.
    """

    def __init__(
        self,
        codec: Codec,
        connections: dict[str, ConnectionConfig],
        *,
        max_bytes: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.codec = codec
        self.connections = connections
        self.max_bytes = max_bytes
        self.max_record_bytes = max_record_bytes

    async def read(
        self, key: bytes | None, value: bytes | None, *, partition: int, offset: int, now_ms: int
    ) -> RequestInfo | Rejection:
        if value is not None and len(value) > self.max_bytes:
            return Rejection("oversize", f"value of {len(value)} bytes exceeds the limit of {self.max_bytes}")
        try:
            record = await self.codec.decode_async("ExportRequested", value)
        except DecodeError as exc:
            return Rejection(exc.reason_code, exc.message)
        return self.validate(record, key, partition=partition, offset=offset, now_ms=now_ms)

    def validate(
        self, record: dict[str, Any], key: bytes | None, *, partition: int, offset: int, now_ms: int
    ) -> RequestInfo | Rejection:
        request_id = str(record.get("request_id") or "")
        tenant = str(record.get("tenant") or "")
        connection = str(record.get("connection") or "")
        correlation = record.get("correlation_id")
        conn = self.connections.get(connection)
        vendor = conn.vendor if conn is not None else ""

        def reject(code: str, message: str, *, with_event: bool = True) -> Rejection:
            event = None
            if with_event:
                info = RequestInfo(request_id, tenant, connection, vendor, "{}", now_ms, partition, offset, correlation)
                event = rejected_event(info, ErrorInfo(code, redact_text(message), False))
            return Rejection(code, redact_text(message), event)

        if not request_id.strip() or len(request_id) > MAX_ID_LENGTH:
            return reject("invalid_request", f"request_id must be 1-{MAX_ID_LENGTH} characters", with_event=False)
        if key is None or key != request_id.encode():
            # State is co-partitioned by key; a request under another key would escape
            # duplicate detection, so it is refused rather than guessed at.
            shown = key.decode("utf-8", "replace")[:80] if key is not None else "null"
            return reject("key_mismatch", f"message key {shown!r} must equal request_id", with_event=False)
        if not tenant.strip():
            return reject("invalid_request", "tenant is empty")
        if conn is None:
            return reject("unknown_connection", f"no connection named {connection!r} is configured")
        tagged = isinstance(record.get("job"), tuple)
        job_type, job = record["job"] if tagged else ("", {})
        short = job_type.rsplit(".", 1)[-1]
        cancel = short == CANCEL
        job_fields = jsonable(job)
        if not cancel:
            expected = JOB_VENDORS.get(short)
            if expected != conn.vendor:
                return reject(
                    "invalid_request", f"connection {connection!r} is {conn.vendor}, but the job is a {short}"
                )
            try:
                validator(conn.vendor)(job_fields, now_ms, conn)
            except InvalidRequest as exc:
                return reject(exc.reason_code, exc.message)
            except ConfigError as exc:
                return reject("unknown_connection", str(exc))
        labels = record.get("labels")
        info = RequestInfo(
            request_id=request_id,
            # Tens of thousands of open jobs share a few tenants and connections: intern.
            tenant=sys.intern(tenant),
            connection=sys.intern(connection),
            vendor=sys.intern(conn.vendor),
            job_json=json.dumps(
                {"type": short, **job_fields} if tagged else jsonable(record["job"]),
                separators=(",", ":"),
                sort_keys=True,
            ),
            requested_at_ms=epoch_ms(record.get("requested_at") or now_ms),
            partition=partition,
            offset=offset,
            correlation_id=correlation,
            labels=dict(labels) if labels else NO_LABELS,
            replay_of=record.get("replay_of"),
            cancel=cancel,
        )
        # Checked against what will be written, not the input: JSON escaping can make a
        # job several times larger than its Avro bytes (control characters: 6x).
        needed = state_size_bound(info) + VENDOR_FIELDS_BOUND + STATE_HEADERS_BOUND
        if needed > self.max_record_bytes:
            return reject(
                "state_too_large",
                f"the job's state record could reach {needed} bytes (its job is {len(info.job_json)} characters "
                f"as JSON); records are limited to {self.max_record_bytes} bytes",
            )
        return info
