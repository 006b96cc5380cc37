"""What the worker would do with a request, without doing it (``--dry-run``).

The prediction runs the worker's own code: ``Ingest`` (decode, key, connection and
vendor rules) and the engine's ``step`` on the request's current state from
export.jobs, then names the transition. Nothing is duplicated, so a dry run cannot
drift from what the worker does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from worker.codec import Codec
from worker.config import ConnectionConfig
from worker.engine.machine import Context, step
from worker.engine.model import (
    Announce,
    JobState,
    PublishStatus,
    RequestInfo,
    RequestReceived,
    Status,
    Transition,
)
from worker.engine.policy import Policy
from worker.errors import ConfigError, DecodeError
from worker.ingest import CANCEL, Ingest, Rejection, jsonable
from worker.limits import DEFAULT_MAX_RECORD_BYTES
from worker.ops.run import Outcome, OutcomeKind, fail
from worker.ops.timeparse import format_ms
from worker.redaction import redact_text
from worker.vendor_registry import JOB_VENDORS
from worker.vendors import adapter_class


class Predictor:
    """Predicts the worker's handling of requests.

    Args:
        codec: the wire codec.
        states: request id -> current state (export.jobs).
        connections: the workers' connections; None when unknown, then connection and
            vendor rules are not checked (the outcome says so).
        max_bytes: the workers' ``max_request_bytes``.
        max_record_bytes: the workers' ``max_record_bytes``.
        now_ms: the time to judge links and date ranges at.
    """

    def __init__(
        self,
        codec: Codec,
        states: Mapping[str, JobState],
        *,
        connections: dict[str, ConnectionConfig] | None,
        max_bytes: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        now_ms: int,
    ) -> None:
        self.codec = codec
        self.states = states
        self.connections = connections
        self.now_ms = now_ms
        self.ingest = Ingest(codec, connections or {}, max_bytes=max_bytes, max_record_bytes=max_record_bytes)

    async def predict(self, key: bytes | None, value: bytes | None) -> Outcome:
        # Offsets -1: a replayed record is never a redelivery of the one that made the state.
        read = await self.ingest.read(key, value, partition=-1, offset=-1, now_ms=self.now_ms)
        unchecked = False
        if isinstance(read, Rejection):
            request_id = read.event.request_id if read.event is not None else None
            if read.reason_code == "unknown_connection" and self.connections is None:
                info = await self._unchecked(key, value)
                if info is None:
                    return fail(read.reason_code, read.reason, request_id)
                read, unchecked = info, True
            elif read.event is not None:
                state = self.states.get(read.event.request_id)
                if state is not None and state.status is not Status.REJECTED:
                    # The worker answers DUPLICATE with this error; the job stays as it is.
                    return fail(read.reason_code, f"{read.reason} (the job stays {state.status.value})", request_id)
                return fail(read.reason_code, read.reason, request_id)
            else:
                return fail(read.reason_code, read.reason, request_id)
        outcome = self._engine(read)
        # Only a request that would run again depends on a check we could not make.
        if unchecked and outcome.kind in (OutcomeKind.RESUBMIT, OutcomeKind.CANCEL):
            note = "connection not checked: give --connections"
            outcome = Outcome(outcome.kind, f"{outcome.text} [{note}]", read.request_id)
        return outcome

    async def _unchecked(self, key: bytes | None, value: bytes | None) -> RequestInfo | None:
        """The request as ingest would read it, past the connection check we cannot make."""
        try:
            record = await self.codec.decode_async("ExportRequested", value)
        except DecodeError:
            return None
        job = record.get("job")
        short = job[0].rsplit(".", 1)[-1] if isinstance(job, tuple) else ""
        request_id = str(record["request_id"])
        state = self.states.get(request_id)
        vendor = JOB_VENDORS.get(short) or (state.vendor if state is not None else "")
        return RequestInfo(
            request_id=request_id,
            tenant=str(record.get("tenant") or ""),
            connection=str(record.get("connection") or ""),
            vendor=vendor,
            job_json=json.dumps(jsonable(job), separators=(",", ":"), sort_keys=True),
            requested_at_ms=self.now_ms,
            partition=-1,
            offset=-1,
            replay_of=record.get("replay_of"),
            cancel=short == CANCEL,
        )

    def _policy(self, vendor: str) -> Policy:
        try:
            can_cancel = callable(getattr(adapter_class(vendor), "cancel", None))
        except ConfigError:
            can_cancel = False
        return Policy(can_cancel=can_cancel)

    def _engine(self, request: RequestInfo) -> Outcome:
        state = self.states.get(request.request_id)
        vendor = state.vendor if state is not None else request.vendor
        transition = step(state, RequestReceived(request), Context(self.now_ms, 0.5, self._policy(vendor)))
        return Outcome(*name_transition(state, transition), request.request_id)


def name_transition(state: JobState | None, transition: Transition) -> tuple[OutcomeKind, str]:
    """Put what the engine decided for a request into words."""
    published = [e for e in transition.effects if isinstance(e, PublishStatus)]
    announced = [e for e in transition.effects if isinstance(e, Announce)]
    if announced:
        expiry = announced[0].file.expires_at_ms
        until = f"link valid until {format_ms(expiry)}" if expiry is not None else "link without expiry"
        return OutcomeKind.REANNOUNCE, f"re-announce file ({until})"
    if not published:
        if transition.persist and transition.state is not None and transition.state.cancel_requested:
            return OutcomeKind.CANCEL, f"cancel: asks the vendor to cancel the {transition.state.status.value} job"
        current = state.status.value if state is not None else "unknown"
        return OutcomeKind.SKIP, f"skip: already finished ({current})"
    event = published[0]
    if event.status is Status.ACCEPTED:
        why = "no state" if state is None else f"was {state.status.value.lower()}"
        return OutcomeKind.RESUBMIT, f"resubmit ({why})"
    if event.status is Status.DUPLICATE:
        assert state is not None
        code = event.error.code if event.error is not None else ""
        if code == "duplicate_request" or state.open:
            return OutcomeKind.DUPLICATE, f"duplicate: still {state.status.value}, no new job"
        if code == "link_expired":
            why = f"{state.status.value}, link expired; --force exports again"
            return OutcomeKind.SKIP, f"skip: already finished ({why})"
        if code == "already_announced":
            why = f"{state.status.value}, file announced; the link is still valid"
            return OutcomeKind.SKIP, f"skip: already finished ({why})"
        return OutcomeKind.SKIP, f"skip: already finished ({state.status.value})"
    if event.status is Status.CANCELLED:
        return OutcomeKind.CANCEL, "cancel: not submitted yet, ends CANCELLED"
    if event.error is not None:
        return OutcomeKind.FAIL, f"would fail: {event.error.code}: {redact_text(event.error.message)}"
    return OutcomeKind.SKIP, f"skip: publishes {event.status.value}"
