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
from worker.redaction import redact_text
from worker.vendor_registry import JOB_VENDORS
from worker.vendors import validator

CANCEL = "CancelExport"
MAX_ID_LENGTH = 256
# A request's job (as JSON), labels and ids are kept in its export.jobs record, which must
# fit librdkafka's 1,000,000-byte message.max.bytes with room for what the job gains later
# (vendor ids, statuses, link, errors). A record over it would fail every transaction
# that carries it: the partition would be restored and the request read again, forever.
MAX_STORED_BYTES = 900_000


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

    def __init__(self, codec: Codec, connections: dict[str, ConnectionConfig], *, max_bytes: int) -> None:
        self.codec = codec
        self.connections = connections
        self.max_bytes = max_bytes

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
                event = RequestRejected(
                    request_id=request_id,
                    tenant=tenant,
                    connection=connection,
                    vendor=vendor,
                    partition=partition,
                    offset=offset,
                    error=ErrorInfo(code, redact_text(message), False),
                    correlation_id=correlation,
                )
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
        job_type, job = record["job"] if isinstance(record.get("job"), tuple) else ("", {})
        short = job_type.rsplit(".", 1)[-1]
        cancel = short == CANCEL
        if not cancel:
            expected = JOB_VENDORS.get(short)
            if expected != conn.vendor:
                return reject(
                    "invalid_request", f"connection {connection!r} is {conn.vendor}, but the job is a {short}"
                )
            try:
                validator(conn.vendor)(jsonable(job), now_ms, conn)
            except InvalidRequest as exc:
                return reject(exc.reason_code, exc.message)
            except ConfigError as exc:
                return reject("unknown_connection", str(exc))
        labels = record.get("labels")
        job_json = json.dumps(jsonable(record["job"]), separators=(",", ":"), sort_keys=True)
        stored = _stored_bytes(
            job_json, labels or {}, request_id, tenant, connection, correlation, record.get("replay_of")
        )
        if stored > MAX_STORED_BYTES:
            return reject(
                "oversize",
                f"the request would take about {stored} bytes in its job state, over the limit of "
                f"{MAX_STORED_BYTES} (its job as JSON is {len(job_json)} bytes: JSON escapes control and "
                "non-ASCII characters)",
            )
        return RequestInfo(
            request_id=request_id,
            # Tens of thousands of open jobs share a few tenants and connections: intern.
            tenant=sys.intern(tenant),
            connection=sys.intern(connection),
            vendor=sys.intern(conn.vendor),
            job_json=job_json,
            requested_at_ms=epoch_ms(record.get("requested_at") or now_ms),
            partition=partition,
            offset=offset,
            correlation_id=correlation,
            labels=dict(labels) if labels else NO_LABELS,
            replay_of=record.get("replay_of"),
            cancel=cancel,
        )


def _stored_bytes(job_json: str, labels: dict[str, str], *strings: str | None) -> int:
    """At least what these take in a JobState record (Avro: UTF-8 bytes plus a length
    prefix of at most 10 bytes each; job_json is ASCII, JSON escapes the rest)."""
    texts = [*labels.keys(), *labels.values(), *(s for s in strings if s)]
    return len(job_json) + 10 + sum(len(t.encode("utf-8", "surrogatepass")) + 10 for t in texts)
