"""One engine step for one job, and its effects handed to whoever carries them out:
records to the outbox, vendor calls to the dispatcher (after the commit when the step
wrote an intent), the next timer to the dispatcher's heap."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace

import structlog

from worker.codec import Codec
from worker.config import TopicSettings
from worker.engine.machine import Context, step
from worker.engine.model import (
    NO_LABELS,
    Announce,
    CallFailed,
    CallKind,
    CallVendor,
    ErrorInfo,
    Event,
    JobState,
    Phase,
    PublishStatus,
    Restored,
    Transition,
)
from worker.errors import DecodeError
from worker.observability import Metrics, log_status
from worker.records import decode_state_now, file_record, status_record
from worker.runtime.calls import Call
from worker.runtime.clients import Clock
from worker.runtime.connections import FALLBACK_POLICY, Connection
from worker.runtime.dispatcher import CallDispatcher
from worker.runtime.mailbox import CallAnswered
from worker.runtime.outbox import Outbox, Outgoing
from worker.runtime.partitions import OwnedPartition
from worker.runtime.refused import RefusedRecords
from worker.store import PartitionStore, StoreSet

log = structlog.get_logger("export_worker")


class Stepper:
    def __init__(
        self,
        *,
        connections: dict[str, Connection],
        outbox: Outbox,
        dispatcher: CallDispatcher,
        codec: Codec,
        topics: TopicSettings,
        clock: Clock,
        rng: random.Random,
        metrics: Metrics,
        refused: RefusedRecords | None = None,
        stores: StoreSet | None = None,
    ) -> None:
        self._connections = connections
        self._stores = stores
        self._refused = refused or RefusedRecords()
        self._outbox = outbox
        self._dispatcher = dispatcher
        self._codec = codec
        self._topics = topics
        self._clock = clock
        self._rng = rng
        self._metrics = metrics

    def context(self, connection: Connection | None) -> Context:
        policy = connection.policy if connection is not None else FALLBACK_POLICY
        return Context(self._clock.now_ms(), self._rng.random(), policy)

    def apply(
        self,
        part: OwnedPartition,
        request_id: str,
        event: Event,
        slot: Connection | None = None,
        *,
        persist_changes: bool = False,
        span_id: str | None = None,
    ) -> None:
        """Step the job with ``event``. ``slot``: the connection whose call slot the job
        was admitted with (given back if the step asks for no call). ``persist_changes``:
        write the new state whenever it differs, even if the engine would not (a sweep:
        the store's expiry index follows only what is written)."""
        state = part.jobs.get(request_id)
        cold = False
        if state is None:
            state = self.cold_state(part, request_id)
            cold = state is not None
        conn_name = (
            state.connection if state is not None else getattr(getattr(event, "request", event), "connection", "")
        )
        conn = self._connections.get(conn_name)
        refused = self._refused.job(request_id) if state is not None and not _trimmed(state) else None
        if refused is not None and state is not None and state.open:
            event = CallFailed(kind=CallKind.POLL, error=ErrorInfo("record_refused", refused, False))
        transition = step(state, event, self.context(conn))
        if refused is not None and transition.state is not None:
            # The broker refused a record of this job: keep only what fits anywhere.
            kept = transition.state.evolve(job_json="{}", labels=NO_LABELS, body_in_store=False)
            transition = Transition(kept, True, transition.effects)
        if persist_changes and not transition.persist and transition.state != state:
            transition = Transition(transition.state, True, transition.effects)
        if span_id is not None and transition.state is not None and transition.state.trace is not None:
            # The job's next call, on this worker or the next owner, links to this one.
            trace = replace(transition.state.trace, last_span_id=span_id, last_call_at_ms=self._clock.now_ms())
            transition = Transition(transition.state.evolve(trace=trace), transition.persist, transition.effects)
        new = transition.state
        # Every record is built (and encoded) before anything changes: a failure here
        # leaves the job exactly as it was.
        records, call = self._effects(part, request_id, state, transition, conn, slot)
        if call is not None and not records and self._held_by_pause(call):
            # A paused connection submits nothing new, whichever step asks for it (a
            # queued job, a resubmit after a lost answer, a reconcile that found
            # nothing): the job stays as it was, parked until the connection resumes.
            self._dispatcher.park(call.connection, part.number, request_id)
            if slot is not None:
                self._dispatcher.release_slot(slot)
            return
        if new is None:
            part.jobs.pop(request_id, None)
        elif not cold or transition.persist or new.open:
            part.jobs[request_id] = new
        # else a finished job stepped without a change to write: it stays in the store only
        if state is not None and state.open and (new is None or not new.open):
            self._dispatcher.job_ended(part, request_id, state)
        if transition.persist:
            self._outbox.put_state(part.number, request_id, new)
        self._outbox.add(records)
        self._observe(request_id, transition)
        if call is not None:
            if transition.persist:
                self._dispatcher.hold_intent(call)
                self._outbox.hold(call)  # e.g. the SUBMITTING intent must be durable first
            else:
                self._dispatcher.dispatch(call)
        elif slot is not None:
            self._dispatcher.release_slot(slot)
        if (
            new is not None
            and new.next_action_at_ms > 0
            and (state is None or new.next_action_at_ms != state.next_action_at_ms)
            and (new.open or self.store_of(part) is None)  # a stored finished job is due by the sweep
        ):
            self._dispatcher.schedule(new.next_action_at_ms, part.number, request_id)

    def trimmed(self, number: int, state: JobState) -> JobState:
        """``state`` as memory keeps an accepted job whose state is committed: its body
        cut down to what its calls still read (``poll_view``), the rest in the store.
        Equal views are interned, so thousands of jobs share one string."""
        if state.body_in_store or state.phase is not Phase.ACTIVE or self._stores is None:
            return state
        if self._stores.get(number) is None:
            return state
        conn = self._connections.get(state.connection)
        if conn is None:
            return state
        try:
            view = conn.adapter.poll_view(json.loads(state.job_json))
        except (ValueError, TypeError):
            return state  # not a JSON object: keep it whole
        compact = sys.intern(json.dumps(view, separators=(",", ":")))
        return state.evolve(job_json=compact, body_in_store=True)

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def decoded(self, request_id: str, value: bytes) -> JobState | None:
        """A restored job's value decoded; None when it cannot be read (logged, and the
        job is dropped as a restore drops one)."""
        try:
            return decode_state_now(self._codec, value)
        except DecodeError as exc:
            log.error("unreadable job state skipped", key=request_id, error=str(exc))
            return None

    def unparked(self, number: int, request_id: str, value: bytes) -> JobState | None:
        """A parked job (``job_table``) decoded as memory keeps it (None: unreadable)."""
        state = self.decoded(request_id, value)
        return None if state is None else self.trimmed(number, state)

    def store_of(self, part: OwnedPartition) -> PartitionStore | None:
        """The partition's store, once it holds the partition (restored into it)."""
        if self._stores is None or not part.ready:
            return None
        return self._stores.get(part.number)

    def cold_state(self, part: OwnedPartition, request_id: str) -> JobState | None:
        """A job not in memory, as its partition's store holds it (finished jobs live
        only there): a duplicate, a replay or a sweep steps it like a hot one."""
        store = self.store_of(part)
        if store is None:
            return None
        value = store.get(request_id)
        if value is None:
            return None
        try:
            return decode_state_now(self._codec, value)
        except DecodeError as exc:
            # A damaged value, or (registry mode) an old writer schema this process has
            # not fetched: the restore fetches those of what it folds in, and the current
            # one is known from registering it.
            log.error("stored job state unreadable", request_id=request_id, error=str(exc))
            return None

    def _held_by_pause(self, call: Call) -> bool:
        return call.kind is CallKind.SUBMIT and self._dispatcher.paused(call.connection)

    def _effects(
        self,
        part: OwnedPartition,
        request_id: str,
        state: JobState | None,
        transition: Transition,
        conn: Connection | None,
        slot: Connection | None,
    ) -> tuple[list[Outgoing], Call | None]:
        new = transition.state
        topics = self._topics
        records: list[Outgoing] = []
        call: Call | None = None
        key = request_id.encode()
        for effect in transition.effects:
            assert new is not None
            if isinstance(effect, PublishStatus):
                value = self._codec.encode("JobStatusChanged", status_record(new, effect), topic=topics.status)
                status = effect.status.value
                records.append(Outgoing(part.number, topics.status, key, value, None, trace=new.trace, what=status))
            elif isinstance(effect, Announce):
                value = self._codec.encode("FileReady", file_record(new, effect), topic=topics.files)
                records.append(Outgoing(part.number, topics.files, key, value, None, trace=new.trace, what="FileReady"))
            elif isinstance(effect, CallVendor) and conn is not None:
                call = Call(
                    part.number, part.incarnation, request_id, effect.kind, conn, new, slot is not None, before=state
                )
        return records, call

    def _observe(self, request_id: str, transition: Transition) -> None:
        new = transition.state
        for effect in transition.effects:
            assert new is not None
            if isinstance(effect, PublishStatus):
                self._metrics.child(self._metrics.status_events, new.vendor, effect.status.value).inc()
                log_status(
                    {
                        "request_id": request_id,
                        "vendor": new.vendor,
                        "connection": new.connection,
                        "vendor_job_id": new.vendor_job_id,
                        "status": effect.status.value,
                        "previous": effect.previous_status.value if effect.previous_status else None,
                        "sequence": effect.sequence,
                        "error": effect.error.message if effect.error else None,
                    }
                )
            elif isinstance(effect, Announce):
                self._metrics.child(self._metrics.files, new.vendor).inc()

    def answer(self, part: OwnedPartition, report: CallAnswered) -> None:
        """Step a job with a vendor's answer, and keep the answer until what it produced
        is durable (see ``Outbox``)."""
        self.apply(part, report.request_id, report.event, span_id=report.span_id)
        self._outbox.note_answer(report)

    def withdraw(self, part: OwnedPartition, call: Call) -> None:
        """Take back a submit that never started: the job is again as it was before its
        intent, due now, and that state is written with the next transaction."""
        assert call.withdrawable and call.before is not None
        due = self._clock.now_ms()
        reverted = call.before.evolve(next_action_at_ms=due)
        part.jobs[call.request_id] = reverted
        self._outbox.put_state(part.number, call.request_id, reverted)
        self._dispatcher.schedule(due, part.number, call.request_id)

    def resumed(self, state: JobState) -> JobState:
        """A restored job as this worker resumes it (the engine's ``Restored`` step)."""
        resumed = step(state, Restored(), self.context(self._connections.get(state.connection))).state
        assert resumed is not None
        return resumed


def _trimmed(state: JobState) -> bool:
    """Already cut down after a refused record (finished, with no job text or labels)."""
    return not state.open and state.job_json == "{}" and not state.labels and not state.body_in_store
