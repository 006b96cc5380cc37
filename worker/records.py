"""Engine values <-> the Avro records of our schemas (no I/O but the codec's)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.codec import NAMESPACE, Codec
from worker.engine.model import (
    NO_LABELS,
    Announce,
    ErrorInfo,
    FileInfo,
    JobState,
    Phase,
    PublishStatus,
    RequestInfo,
    Status,
    TraceContext,
)
from worker.errors import DecodeError
from worker.limits import TRACE_CONTEXT_BOUND

# A record in a ["null", record] union is written as fastavro's (full name, fields)
# pair: a bare dict makes fastavro validate it against the union's branches to pick one,
# which took a third of a traced JobState's encoding (12.7 against 16.8 us). The bytes
# are the same; records built here are only ever given to ``Codec.encode``.
_FILE_INFO = f"{NAMESPACE}.FileInfo"
_STATE_ERROR = f"{NAMESPACE}.StateError"
_TRACE_CONTEXT = f"{NAMESPACE}.TraceContext"
_EXPORT_ERROR = f"{NAMESPACE}.ExportError"


def _error(error: ErrorInfo | None, record_name: str) -> tuple[str, dict[str, Any]] | None:
    if error is None:
        return None
    return record_name, {"code": error.code, "message": error.message, "retryable": error.retryable}


# Avro adds at most this to a JobState's texts: its numbers (at most 10 bytes each),
# enums, union indexes, the map's block counts, and a length prefix per text.
_STATE_FIXED_BOUND = 256
_TEXT_PREFIX_BOUND = 5


def state_size_bound(request: RequestInfo) -> int:
    """An upper bound of the encoded size of the state a request starts as (before any
    vendor answer; ``worker.limits.VENDOR_FIELDS_BOUND`` is what answers can add)."""
    texts = [
        request.request_id,
        request.tenant,
        request.connection,
        request.vendor,
        request.job_json,
        request.correlation_id or "",
        request.replay_of or "",
        *request.labels.keys(),
        *request.labels.values(),
    ]
    return _STATE_FIXED_BOUND + TRACE_CONTEXT_BOUND + sum(len(t.encode()) + _TEXT_PREFIX_BOUND for t in texts)


def state_to_record(state: JobState) -> dict[str, Any]:
    file = state.file
    return {
        "request_id": state.request_id,
        "tenant": state.tenant,
        "connection": state.connection,
        "vendor": state.vendor,
        "correlation_id": state.correlation_id,
        "labels": state.labels,
        "replay_of": state.replay_of,
        "job_json": state.job_json,
        "requested_at_ms": state.requested_at_ms,
        "origin_partition": state.origin_partition,
        "origin_offset": state.origin_offset,
        "phase": state.phase.value,
        "status": state.status.value,
        "vendor_status": state.vendor_status,
        "vendor_job_id": state.vendor_job_id,
        "sequence": state.sequence,
        "submit_attempt": state.submit_attempt,
        "possible_duplicate": state.possible_duplicate,
        "cancel_requested": state.cancel_requested,
        "next_action_at_ms": state.next_action_at_ms,
        "poll_attempt": state.poll_attempt,
        "failing_since_ms": state.failing_since_ms,
        "file": None
        if file is None
        else (
            _FILE_INFO,
            {
                "url": file.url,
                "expires_at_ms": file.expires_at_ms,
                "format": file.format,
                "size_bytes": file.size_bytes,
                "sha256": file.sha256,
            },
        ),
        "error": _error(state.error, _STATE_ERROR),
        "created_at_ms": state.created_at_ms,
        "updated_at_ms": state.updated_at_ms,
        "finished_at_ms": state.finished_at_ms,
        "trace": None
        if state.trace is None
        else (
            _TRACE_CONTEXT,
            {
                "traceparent": state.trace.traceparent,
                "tracestate": state.trace.tracestate,
                "last_span_id": state.trace.last_span_id,
                "last_call_at_ms": state.trace.last_call_at_ms,
            },
        ),
    }


def state_from_record(rec: dict[str, Any]) -> JobState:
    file = rec.get("file")
    error = rec.get("error")
    vendor_status = rec.get("vendor_status")
    trace = rec.get("trace")
    return JobState.from_fields(
        {
            "request_id": rec["request_id"],
            # Restored by the 100,000: strings every job repeats are interned.
            "tenant": sys.intern(rec["tenant"]),
            "connection": sys.intern(rec["connection"]),
            "vendor": sys.intern(rec["vendor"]),
            "job_json": rec["job_json"],
            "requested_at_ms": rec["requested_at_ms"],
            "origin_partition": rec["origin_partition"],
            "origin_offset": rec["origin_offset"],
            "phase": Phase(rec["phase"]),
            "status": Status(rec["status"]),
            "sequence": rec["sequence"],
            "created_at_ms": rec["created_at_ms"],
            "updated_at_ms": rec["updated_at_ms"],
            "correlation_id": rec.get("correlation_id"),
            "labels": rec.get("labels") or NO_LABELS,
            "replay_of": rec.get("replay_of"),
            "vendor_status": sys.intern(vendor_status) if vendor_status is not None else None,
            "vendor_job_id": rec.get("vendor_job_id"),
            "submit_attempt": rec.get("submit_attempt", 0),
            "possible_duplicate": rec.get("possible_duplicate", False),
            "cancel_requested": rec.get("cancel_requested", False),
            "next_action_at_ms": rec.get("next_action_at_ms", 0),
            "poll_attempt": rec.get("poll_attempt", 0),
            "failing_since_ms": rec.get("failing_since_ms", 0),
            "file": None
            if file is None
            else FileInfo(
                url=file["url"],
                format=file["format"],
                expires_at_ms=file.get("expires_at_ms"),
                size_bytes=file.get("size_bytes"),
                sha256=file.get("sha256"),
            ),
            "error": None if error is None else ErrorInfo(error["code"], error["message"], error["retryable"]),
            "finished_at_ms": rec.get("finished_at_ms"),
            "trace": None
            if trace is None
            else TraceContext(
                trace["traceparent"], trace["tracestate"], trace["last_span_id"], trace["last_call_at_ms"]
            ),
            "submit_unknown_at_ms": 0,
            "body_in_store": False,
        }
    )


async def decode_state(codec: Codec, value: bytes) -> JobState:
    """One export.jobs value as a state; DecodeError when it is not one we can read (not
    a record of our schemas, or a JobState with a missing or invalid field)."""
    return _valid_state(await codec.decode_async("JobState", value))


def decode_state_now(codec: Codec, value: bytes) -> JobState:
    """``decode_state`` without network I/O: a registry schema the codec has not fetched
    is DecodeError(unknown_schema) (the loop's reads of a partition store)."""
    return _valid_state(codec.decode("JobState", value))


def _valid_state(record: dict[str, Any]) -> JobState:
    try:
        return state_from_record(record)
    except (KeyError, ValueError) as exc:
        raise DecodeError("invalid_state", f"not a valid JobState: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class DecodedStates:
    """Values of export.jobs read as states."""

    states: dict[str, JobState]  # request id (the record key) -> state
    unreadable: dict[str, str]  # request id -> why its value could not be read


async def decode_states(codec: Codec, values: Mapping[bytes, bytes]) -> DecodedStates:
    """The states in ``values`` (record key -> latest value, as ``kafka.restore`` and
    ``kafka.read_compacted`` return them); a value that cannot be read is counted in
    ``unreadable`` and does not stop the others."""
    states: dict[str, JobState] = {}
    unreadable: dict[str, str] = {}
    for key, value in values.items():
        request_id = key.decode("utf-8", "replace")
        try:
            states[request_id] = await decode_state(codec, value)
        except DecodeError as exc:
            unreadable[request_id] = str(exc)
    return DecodedStates(states, unreadable)


def status_record(state: JobState, effect: PublishStatus) -> dict[str, Any]:
    return {
        "request_id": state.request_id,
        "vendor": state.vendor,
        "vendor_job_id": state.vendor_job_id,
        "status": effect.status.value,
        "previous_status": None if effect.previous_status is None else effect.previous_status.value,
        "vendor_status": effect.vendor_status,
        "sequence": effect.sequence,
        "occurred_at": effect.occurred_at_ms,
        "error": _error(effect.error, _EXPORT_ERROR),
        "possible_duplicate": state.possible_duplicate,
        "tenant": state.tenant,
        "connection": state.connection,
        "correlation_id": state.correlation_id,
    }


def file_record(state: JobState, effect: Announce) -> dict[str, Any]:
    file = effect.file
    return {
        "request_id": state.request_id,
        "vendor": state.vendor,
        "vendor_job_id": state.vendor_job_id or "",
        "url": file.url,
        "expires_at": file.expires_at_ms,
        "format": file.format,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
        "produced_at": effect.produced_at_ms,
        "tenant": state.tenant,
        "connection": state.connection,
        "correlation_id": state.correlation_id,
        "reannounced": effect.reannounced,
    }


def dead_letter_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None,
    reason_code: str,
    reason: str,
    failed_at_ms: int,
    request_id: str | None,
    worker: str,
) -> dict[str, Any]:
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp_ms,
        "key": key,
        "value": value,
        "headers": [{"key": k, "value": v} for k, v in (headers or [])],
        "reason_code": reason_code,
        "reason": reason,
        "failed_at": failed_at_ms,
        "request_id": request_id,
        "worker": worker,
    }
