"""``jobs list`` and ``jobs show``: what export.jobs, export.status and export.files say
about requests.

A request's records are keyed by its id. The worker writes its state to the partition
the request was read from and its events with Kafka's default partitioner, so the
key's murmur2 partition is read first; when the key is not there (a producer used
another partitioner) every partition is read.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from worker.codec import Codec, optional_epoch_ms
from worker.config import Settings
from worker.engine.model import JobState
from worker.errors import DecodeError
from worker.ops.errors import OperatorError
from worker.ops.kafkaio import Cluster, connect, read_all
from worker.ops.partitioner import partition_for
from worker.ops.run import Hooks, NoHooks
from worker.ops.states import JobFilters, Progress, load_states
from worker.ops.timeparse import format_ms, parse_time
from worker.ops.wire import codec_for
from worker.records import decode_state
from worker.redaction import redact, redact_text


@dataclass(frozen=True, slots=True)
class JobsListing:
    jobs: list[JobState]
    total: int
    undecodable: int


async def list_jobs(
    settings: Settings,
    *,
    vendor: str | None = None,
    status: str | None = None,
    tenant: str | None = None,
    connection: str | None = None,
    since: str | None = None,
    hooks: Hooks | None = None,
) -> JobsListing:
    """The jobs in export.jobs that match the filters (comma-separated vendors and
    statuses; ``since`` a TIME of the last update), oldest update first."""
    hooks = hooks or NoHooks()
    since_ms = None if since is None else parse_time(since, now_ms=int(time.time() * 1000), flag="--since")
    filters = JobFilters.parse(vendor=vendor, status=status, tenant=tenant, connection=connection, since_ms=since_ms)
    cluster = await connect(settings)
    hooks.phase(f"reading {settings.topics.jobs}", None)
    try:
        snapshot = await load_states(settings, cluster, await codec_for(settings), on_batch=hooks.advance)
    finally:
        hooks.done()
    jobs = sorted(
        (s for s in snapshot.states.values() if filters.match(s)), key=lambda s: (s.updated_at_ms, s.request_id)
    )
    return JobsListing(jobs, len(snapshot.states), snapshot.undecodable)


def job_row(state: JobState) -> dict[str, Any]:
    """One ``jobs list`` row (also its JSON form)."""
    return {
        "request_id": state.request_id,
        "tenant": state.tenant,
        "connection": state.connection,
        "vendor": state.vendor,
        "status": state.status.value,
        "phase": state.phase.value,
        "vendor_job_id": state.vendor_job_id,
        "sequence": state.sequence,
        "possible_duplicate": state.possible_duplicate,
        "updated_at": format_ms(state.updated_at_ms),
    }


# ---- one request's lineage -----------------------------------------------------------


@dataclass
class Lineage:
    """Everything the topics hold about one request id."""

    request_id: str
    state: JobState | None = None
    state_partition: int | None = None
    state_deleted: bool = False  # a tombstone ended it (retention)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    scanned_all: list[str] = field(default_factory=list)  # topics where the key was not in its murmur2 partition

    @property
    def found(self) -> bool:
        return self.state is not None or bool(self.statuses) or bool(self.files) or self.state_deleted

    def as_json(self) -> dict[str, Any]:
        """The lineage as JSON-ready data, secrets redacted."""
        state = self.state
        request: dict[str, Any] | None = None
        vendor_job: dict[str, Any] | None = None
        if state is not None:
            request = {
                "request_id": state.request_id,
                "tenant": state.tenant,
                "connection": state.connection,
                "vendor": state.vendor,
                "requested_at": format_ms(state.requested_at_ms),
                "correlation_id": state.correlation_id,
                "labels": redact(dict(state.labels)),
                "replay_of": state.replay_of,
                "job": _job(state.job_json),
                "read_from": f"{state.origin_partition}:{state.origin_offset}",
                "trace_id": state.trace.trace_id if state.trace is not None else None,
            }
            vendor_job = {
                "vendor_job_id": state.vendor_job_id,
                "submit_attempts": state.submit_attempt,
                "possible_duplicate": state.possible_duplicate,
                "phase": state.phase.value,
                "status": state.status.value,
                "vendor_status": state.vendor_status,
                "error": _error(state.error.code, state.error.message) if state.error else None,
                "created_at": format_ms(state.created_at_ms),
                "updated_at": format_ms(state.updated_at_ms),
                "finished_at": format_ms(state.finished_at_ms),
            }
        return {
            "request_id": self.request_id,
            "request": request,
            "vendor_job": vendor_job,
            "state_partition": self.state_partition,
            "state_deleted": self.state_deleted,
            "statuses": [
                {
                    "sequence": e["sequence"],
                    "status": e["status"],
                    "previous_status": e.get("previous_status"),
                    "vendor_status": e.get("vendor_status"),
                    "vendor_job_id": e.get("vendor_job_id"),
                    "at": format_ms(e["occurred_at"]),
                    "possible_duplicate": e.get("possible_duplicate", False),
                    "error": _error(e["error"]["code"], e["error"]["message"]) if e.get("error") else None,
                }
                for e in self.statuses
            ],
            "files": [
                {
                    "url": redact_text(f["url"]),
                    "format": f.get("format"),
                    "expires_at": format_ms(f.get("expires_at")),
                    "size_bytes": f.get("size_bytes"),
                    "sha256": f.get("sha256"),
                    "vendor_job_id": f.get("vendor_job_id"),
                    "produced_at": format_ms(f.get("produced_at")),
                    "reannounced": f.get("reannounced", False),
                }
                for f in self.files
            ],
            "scanned_all_partitions": self.scanned_all,
        }


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": redact_text(message)}


def _job(job_json: str) -> Any:
    try:
        return redact(json.loads(job_json))
    except ValueError:
        return redact_text(job_json)


async def _records_for_key(
    settings: Settings, cluster: Cluster, topic: str, key: bytes, scanned_all: list[str], on_batch: Progress | None
) -> list[Message]:
    count = await cluster.partitions(topic)
    home = partition_for(key, count)
    spans = await cluster.whole(topic, [home])
    found = [m for m in await read_all(settings, topic, spans, on_batch=on_batch) if m.key() == key]
    if found or count == 1:
        return found
    scanned_all.append(topic)
    spans = await cluster.whole(topic, [p for p in range(count) if p != home])
    return [m for m in await read_all(settings, topic, spans, on_batch=on_batch) if m.key() == key]


async def show_job(settings: Settings, request_id: str, *, hooks: Hooks | None = None) -> Lineage:
    """Request -> vendor job -> every status change -> file(s), for one request id;
    OperatorError when no topic knows it."""
    hooks = hooks or NoHooks()
    hooks.phase(f"looking for {request_id}", None)
    try:
        lineage = await _lineage(settings, request_id, hooks.advance)
    finally:
        hooks.done()
    if not lineage.found:
        t = settings.topics
        raise OperatorError(f"no request {request_id!r} in {t.jobs}, {t.status} or {t.files}")
    return lineage


async def _lineage(settings: Settings, request_id: str, on_batch: Progress) -> Lineage:
    cluster = await connect(settings)
    codec = await codec_for(settings)
    key = request_id.encode()
    t = settings.topics
    lineage = Lineage(request_id)
    states = await _records_for_key(settings, cluster, t.jobs, key, lineage.scanned_all, on_batch)
    statuses = await _records_for_key(settings, cluster, t.status, key, lineage.scanned_all, on_batch)
    files = await _records_for_key(settings, cluster, t.files, key, lineage.scanned_all, on_batch)
    last = states[-1] if states else None
    return await lineage_of(
        codec,
        lineage,
        state=(last.partition(), last.value()) if last is not None else None,
        statuses=[m.value() for m in statuses],
        files=[m.value() for m in files],
    )


async def lineage_of(
    codec: Codec,
    lineage: Lineage,
    *,
    state: tuple[int | None, bytes | None] | None,
    statuses: list[bytes | None],
    files: list[bytes | None],
) -> Lineage:
    """Fill ``lineage`` from a request's records: its latest export.jobs record as
    (partition, value; None for a tombstone), its status and file events' values.
    Values that cannot be decoded are left out."""
    if state is not None:
        lineage.state_partition, value = state
        if value is None:
            lineage.state_deleted = True
        else:
            with contextlib.suppress(DecodeError):  # an unreadable state shows as none
                lineage.state = await decode_state(codec, value)
    for value in statuses:
        try:
            event = await codec.decode_async("JobStatusChanged", value)
        except DecodeError:
            continue
        event["occurred_at"] = optional_epoch_ms(event.get("occurred_at"))
        lineage.statuses.append(event)
    for value in files:
        try:
            record = await codec.decode_async("FileReady", value)
        except DecodeError:
            continue
        record["expires_at"] = optional_epoch_ms(record.get("expires_at"))
        record["produced_at"] = optional_epoch_ms(record.get("produced_at"))
        lineage.files.append(record)
    lineage.statuses.sort(key=lambda e: e["sequence"])
    return lineage
