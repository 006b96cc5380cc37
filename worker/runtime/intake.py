"""Requests read from export.requests: decoded, validated and stepped, or dead-lettered
with a reason. Bad input never stops a partition."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog
from confluent_kafka import KafkaException

from worker.codec import Codec
from worker.config import Settings
from worker.engine.model import ErrorInfo, RequestInfo, RequestReceived, TraceContext
from worker.errors import RegistryUnavailable, WorkerFenced
from worker.exclusive import exclusive_kind_of, home_partition
from worker.ingest import Ingest, Rejection, rejected_event
from worker.limits import (
    MAX_DEAD_LETTER_HEADER_BYTES,
    MAX_DEAD_LETTER_HEADERS,
    MAX_DEAD_LETTER_KEY_BYTES,
    MAX_REASON_BYTES,
    clip,
)
from worker.observability import Metrics
from worker.records import dead_letter_record
from worker.redaction import redact_text
from worker.runtime.clients import Clock
from worker.runtime.outbox import Outbox, Outgoing
from worker.runtime.partitions import OwnedPartition, Partitions
from worker.runtime.refused import RefusedRecords
from worker.runtime.stepper import Stepper
from worker.tracing import Tracing, fail, trace_headers

log = structlog.get_logger("export_worker")


def bounded_headers(headers: list[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes | None]]:
    """The first headers that fit in a dead letter's bounds (count and bytes)."""
    kept: list[tuple[str, bytes | None]] = []
    room = MAX_DEAD_LETTER_HEADER_BYTES
    for name, value in (headers or [])[:MAX_DEAD_LETTER_HEADERS]:
        size = len(name.encode()) + (len(value) if value is not None else 0)
        if size > room:
            break
        kept.append((name, value))
        room -= size
    return kept


def _rejected(request: RequestInfo, code: str, why: str) -> Rejection:
    return Rejection(code, why, rejected_event(request, ErrorInfo(code, why, False)))


class Intake:
    def __init__(
        self,
        settings: Settings,
        *,
        partitions: Partitions,
        stepper: Stepper,
        outbox: Outbox,
        codec: Codec,
        clock: Clock,
        metrics: Metrics,
        worker_id: str,
        refused: RefusedRecords | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._partitions = partitions
        self._stepper = stepper
        self._outbox = outbox
        self._codec = codec
        self._clock = clock
        self._metrics = metrics
        self._worker_id = worker_id
        self._refused = refused or RefusedRecords()
        self._ingest: Ingest | None = None
        # export.requests' partition count (set at start): where exclusive kinds live.
        self.request_partitions = 0

    def open(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def take(self, messages: list[Any]) -> dict[int, int]:
        """Process a consumed batch. Returns where to rewind partitions that were not
        ready yet (fetched before their pause took effect): they are read again later."""
        rewind: dict[int, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error", error=err.str())
                continue
            number = msg.partition()
            part = self._partitions.get(number)
            if part is None:
                continue  # not ours (any more): the owner reads it
            if not part.ready:
                # Fetched before the pause (or before a resync's rewind) took effect: read
                # it again once restored, from where the resync rewound to if there was one.
                rewind.setdefault(number, part.resume_at if part.resume_at is not None else msg.offset())
                continue
            if number in rewind:
                continue
            try:
                await self._take_one(part, msg)
            except (WorkerFenced, RegistryUnavailable, KafkaException):
                raise
            except Exception as exc:  # a request we cannot handle must not stop its partition
                log.exception("request could not be processed; dead-lettered", partition=number, offset=msg.offset())
                self._dead_letter(part, msg, Rejection("internal_error", f"{type(exc).__name__}: {exc}"))
                part.next_offset = msg.offset() + 1
        return rewind

    async def _take_one(self, part: OwnedPartition, msg: Any) -> None:
        if not self._tracing.enabled:
            await self._read_one(part, msg)
            return
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": msg.topic(),
            "messaging.destination.partition.id": str(part.number),
            "messaging.kafka.offset": msg.offset(),
        }
        with self._tracing.ingest(msg.headers(), attributes) as (span, job):
            outcome = await self._read_one(part, msg, job)
            if isinstance(outcome, Rejection):
                fail(span, outcome.reason_code)
            else:
                span.set_attribute("export.request_id", outcome.request_id)
                span.set_attribute("export.connection", outcome.connection)

    async def _read_one(self, part: OwnedPartition, msg: Any, trace: TraceContext | None = None) -> Any:
        assert self._ingest is not None
        self._outbox.offsets_advanced()
        now = self._clock.now_ms()
        outcome = await self._ingest.read(
            msg.key(), msg.value(), partition=part.number, offset=msg.offset(), now_ms=now
        )
        if trace is not None:
            if isinstance(outcome, RequestInfo):
                outcome = replace(outcome, trace=trace)
            elif outcome.event is not None:
                outcome = replace(outcome, event=replace(outcome.event, trace=trace))
        if isinstance(outcome, RequestInfo):
            refused = self._refused.job(outcome.request_id)
            if refused is not None:
                outcome = _rejected(outcome, "record_refused", refused)
        if isinstance(outcome, Rejection):
            if outcome.event is not None:
                self._stepper.apply(part, outcome.event.request_id, outcome.event)
            self._dead_letter(part, msg, outcome, now)
        elif (home := self._home_of(outcome)) is not None and home != part.number:
            self._forward(part, msg, outcome, home)
        else:
            self._metrics.child(self._metrics.requests, "read").inc()
            self._stepper.apply(part, outcome.request_id, RequestReceived(outcome))
        part.next_offset = msg.offset() + 1
        return outcome

    def _home_of(self, request: RequestInfo) -> int | None:
        """The home partition of a request of an exclusive kind (``worker.exclusive``)."""
        assert self._ingest is not None
        conf = self._ingest.connections.get(request.connection)
        if conf is None or self.request_partitions <= 0:
            return None
        kind = exclusive_kind_of(conf.vendor, conf.exclusive_kinds, request.job_json)
        return None if kind is None else home_partition(request.connection, kind, self.request_partitions)

    def _forward(self, part: OwnedPartition, msg: Any, request: RequestInfo, home: int) -> None:
        """Hand the request, as it was read, to its home partition: in the same
        transaction as this partition's offset, so exactly once."""
        self._metrics.child(self._metrics.requests, "forwarded").inc()
        log.info("request forwarded to the home of its kind", request_id=request.request_id, partition=home)
        topic = self._settings.topics.requests
        headers = trace_headers(msg.headers())  # the request stays in its producer's trace
        self._outbox.add([Outgoing(part.number, topic, msg.key(), msg.value(), home, headers=headers)])

    def _dead_letter(self, part: OwnedPartition, msg: Any, rejection: Rejection, now_ms: int | None = None) -> None:
        self._metrics.dead_letters.labels(rejection.reason_code).inc()
        self._metrics.requests.labels("dead_lettered").inc()
        ts_type, ts = msg.timestamp()
        request_id = rejection.event.request_id if rejection.event is not None else None
        log.warning(
            "request dead-lettered",
            reason_code=rejection.reason_code,
            reason=rejection.reason,
            partition=part.number,
            offset=msg.offset(),
            request_id=request_id,
        )
        # The dead letter must fit in a record too: the value, key and headers it carries
        # are bounded (worker.limits), or dropped when the broker refused it before.
        value, headers, reason = msg.value(), bounded_headers(msg.headers()), rejection.reason
        refused = self._refused.dead_letter(part.number, msg.offset())
        if refused is not None:
            value, headers, reason = None, [], f"{reason}; its dead letter was refused by the broker ({refused})"
        limit = self._settings.max_request_bytes
        if value is not None and len(value) > limit:
            value = value[:limit]
        key = (msg.key() or b"")[:MAX_DEAD_LETTER_KEY_BYTES]
        record = dead_letter_record(
            topic=msg.topic(),
            partition=part.number,
            offset=msg.offset(),
            timestamp_ms=ts if ts_type != 0 else None,
            key=key,
            value=value,
            headers=headers,
            reason_code=rejection.reason_code,
            reason=clip(redact_text(reason), MAX_REASON_BYTES),
            failed_at_ms=self._clock.now_ms() if now_ms is None else now_ms,
            request_id=request_id,
            worker=self._worker_id,
        )
        dlq = self._settings.topics.dlq
        encoded = self._codec.encode("DeadLetter", record, topic=dlq)
        self._outbox.add([Outgoing(part.number, dlq, key, encoded, None, origin_offset=msg.offset())])
