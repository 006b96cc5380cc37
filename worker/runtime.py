"""The worker process: composition root and the one loop that owns all state.

One asyncio task (the *loop*) owns the consumer, the transactional producer and every
job state. Each turn it:

  1. consumes a batch of requests and turns each into engine steps (or a dead letter),
  2. applies the answers of finished vendor calls and fires due timers,
  3. commits everything produced so far in ONE Kafka transaction, together with the
     consumer's positions (``send_offsets_to_transaction``), every ``commit_interval_ms``,
  4. only then starts the vendor calls those steps asked for.

Vendor calls run as separate tasks that only report back through a queue. Rebalance
callbacks run while the loop is parked inside ``consume()``, so they may touch the
state too: on revoke they let in-flight calls finish (bounded), commit, and drop the
partitions; on assign they pause the new partitions until their slice of export.jobs
is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import time
import traceback
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from worker import kafka as kafka_io
from worker.codec import Codec
from worker.config import ConnectionConfig, ConnectionsFile, Settings, policy_for
from worker.control import ControlFollower, ControlState, read_control_state
from worker.engine.machine import Context, step
from worker.engine.model import (
    Announce,
    CallFailed,
    CallKind,
    CallVendor,
    ErrorInfo,
    Event,
    JobState,
    Phase,
    PublishStatus,
    RequestInfo,
    RequestReceived,
    Restored,
    TimerFired,
)
from worker.engine.policy import Policy
from worker.errors import (
    ConfigError,
    DecodeError,
    ExportWorkerError,
    RateLimited,
    RegistryUnavailable,
    ResultStoreError,
    VendorBusy,
    VendorError,
)
from worker.ingest import Ingest, Rejection
from worker.observability import Metrics, SidePort
from worker.records import dead_letter_record, file_record, state_from_record, state_to_record, status_record
from worker.redaction import redact_text
from worker.registry import registry_for
from worker.results import ResultStore, result_store_from_url
from worker.scheduler import Limiter, TimerHeap
from worker.vendors import Cancellable, JobSpec, VendorAdapter, build_adapter

log = structlog.get_logger("export_worker")

TIMERS_PER_TURN = 5_000
# Submits whose intent may wait for a commit or a slot, per call slot of the connection.
INTENTS_PER_SLOT = 4


class WorkerFenced(ExportWorkerError):
    """Another worker took over this worker's transactional id or partitions: stop."""


class ProducerStuck(WorkerFenced):
    """A transactional call outlived its own timeout: librdkafka's
    send_offsets_to_transaction can wait forever for a group coordinator that went away
    (confluentinc/librdkafka#5456). The producer cannot be used again and its thread
    cannot be joined: the process must be replaced (the next owner resumes from Kafka)."""


@dataclass
class Connection:
    """A configured vendor connection with its adapter, timing policy and limits."""

    name: str
    config: ConnectionConfig
    adapter: VendorAdapter
    policy: Policy
    limiter: Limiter
    parked: list[tuple[int, str]] = field(default_factory=list)  # PENDING jobs held by a pause
    # Due jobs waiting for capacity, oldest first: (partition, request_id, due_ms). Jobs
    # already at the vendor (polls, reconciles, cancels) go before new submits.
    waiting: deque[tuple[int, str, int]] = field(default_factory=deque)
    waiting_submits: deque[tuple[int, str, int]] = field(default_factory=deque)
    # Submits whose intent is written but whose call has not started: bounded, so a
    # crash leaves few intents the next owner must reconcile.
    intents: int = 0


@dataclass
class OwnedPartition:
    number: int
    incarnation: int
    jobs: dict[str, JobState] = field(default_factory=dict)
    ready: bool = False
    revoking: bool = False
    # The input offset to commit: one past the last request fully processed (not the
    # consumer's position, which moves as soon as a batch is handed over).
    next_offset: int | None = None
    # Where the consumer was rewound to by a reset; messages fetched before it are re-read from here.
    resume_at: int | None = None


@dataclass(slots=True)
class Call:
    partition: int
    incarnation: int
    request_id: str
    kind: CallKind
    connection: Connection
    state: JobState
    has_slot: bool
    intent: bool = False  # counted in connection.intents until it starts


@dataclass(slots=True)
class CallResult:
    partition: int
    incarnation: int
    request_id: str
    event: Event


@dataclass(slots=True)
class RestoreDone:
    incarnations: dict[int, int]
    states: dict[int, list[JobState]]
    seconds: float
    committed: dict[int, int]  # the group's committed input offset per partition (absent: none)


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    outgoing: list[Outgoing]
    calls: list[Call]  # to start once it is committed
    offsets: list[TopicPartition]
    metadata: Any  # consumer group metadata, taken with the offsets
    incarnations: dict[int, int]  # the partitions it was cut from


@dataclass(slots=True)
class ControlChange:
    state: ControlState


@dataclass(slots=True)
class Outgoing:
    partition: int  # the request partition the record belongs to
    topic: str
    key: bytes
    value: bytes | None
    target_partition: int | None  # explicit for export.jobs (co-partitioned), else keyed


def build_connections(
    settings: Settings,
    configs: dict[str, ConnectionConfig],
    session: aiohttp.ClientSession,
    metrics: Metrics,
    *,
    defaults: Policy | None = None,
    result_store: Any = None,
) -> dict[str, Connection]:
    out: dict[str, Connection] = {}
    for name, conf in configs.items():

        def observe(connection: str, operation: str, seconds: float, outcome: str, vendor: str = conf.vendor) -> None:
            metrics.child(metrics.vendor_latency, vendor, operation).observe(seconds)
            metrics.child(metrics.vendor_calls, vendor, connection, operation, outcome).inc()
            if outcome == RateLimited.code:
                metrics.rate_limited.labels(vendor, connection).inc()

        adapter = build_adapter(name, conf, session, observe=observe, result_store=result_store)
        policy = policy_for(
            conf,
            can_reconcile=bool(getattr(adapter, "can_reconcile", False)),
            can_cancel=isinstance(adapter, Cancellable),
            defaults=defaults or Policy(),
        )
        limiter = Limiter(max_concurrency=conf.max_concurrency, rate_per_s=conf.rate_per_s)
        out[name] = Connection(name, conf, adapter, policy, limiter)
    return out


def load_connection_configs(settings: Settings) -> dict[str, ConnectionConfig]:
    if settings.connections_file is None:
        raise ConfigError("no connections file: set EXPORT_WORKER_CONNECTIONS_FILE")
    return ConnectionsFile.load(settings.connections_file).connections


class Worker:
    """One worker process.

    Args:
        settings: topics, Kafka, timing.
        connections: connection configs by name (tests, demo); read from
            ``settings.connections_file`` when omitted.
        result_store: where collected artifacts go; from ``settings.result_store_url``
            when omitted.
        codec: wire codec; single-object encoding when omitted.
        clock: wall clock in seconds (time is an input to the engine).
        rng: source of jitter.
        metrics: metrics registry; a fresh one when omitted.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connections: dict[str, ConnectionConfig] | None = None,
        result_store: ResultStore | None = None,
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.codec = codec or Codec()
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self._connection_configs = connections
        self._result_store = result_store
        self.connections: dict[str, Connection] = {}
        self.transactional_id = f"{settings.group_id}-{settings.instance_id}"
        self.partitions: dict[int, OwnedPartition] = {}
        self._incarnation = 0
        self._timers = TimerHeap()
        self._results: asyncio.Queue[CallResult | RestoreDone | ControlChange] = asyncio.Queue()
        self._outgoing: list[Outgoing] = []
        # Latest state per job since the last cut: a job changed twice in one batch needs
        # one record (the transaction is atomic, compaction keeps the last); encoded at cut.
        self._states: dict[tuple[int, str], JobState | None] = {}
        self._after_commit: list[Call] = []
        self._waiting_calls: list[Call] = []
        self._in_flight: dict[int, set[asyncio.Task[None]]] = {}
        self._restores: set[asyncio.Task[None]] = set()
        self._offsets_dirty = False
        self._first_pending = 0.0
        self._committing: tuple[asyncio.Task[KafkaException | None], Batch] | None = None
        self._stopping = False
        self._crashed = False  # the loop died mid-turn: commit nothing more, the next owner redoes it
        self.producer_stuck = False  # see ProducerStuck
        self.stuck_margin_s = 15.0  # past a transactional call's own timeout
        self._committed_lookup = asyncio.Lock()
        self.last_turn = time.monotonic()
        self._started = False
        self._joined = False  # the first assignment (possibly empty) has come
        self._session: aiohttp.ClientSession | None = None
        self.consumer: AIOConsumer | None = None
        self.producer: AIOProducer | None = None
        self.side_port: SidePort | None = None
        self._control: ControlFollower | None = None
        self._lag_checked = 0.0
        self.ingest: Ingest | None = None
        self.admin = kafka_io.admin_client(settings)
        self.metrics.watch_open_jobs(self.open_job_counts)

    # ---- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the task is cancelled), then shut down gracefully."""
        stop = stop or asyncio.Event()
        await self._start()
        stopper = asyncio.create_task(stop.wait())
        try:
            loop_task = asyncio.create_task(self._loop(stopper))
            await loop_task
        except BaseException:
            self._crashed = True
            raise
        finally:
            stopper.cancel()
            await self._shutdown()

    async def _start(self) -> None:
        await kafka_io.ensure_topics(self.settings, self.admin)
        if self.settings.schema_registry_url and self.codec.registry is None:
            self.codec = Codec(self.codec.schemas, await registry_for(self.settings, self.codec.schemas))
        configs = self._connection_configs
        if configs is None:
            configs = load_connection_configs(self.settings)
        self._session = aiohttp.ClientSession()
        self.connections = build_connections(
            self.settings,
            configs,
            self._session,
            self.metrics,
            result_store=self._result_store or result_store_from_url(self.settings.result_store_url),
        )
        self.ingest = Ingest(
            self.codec,
            {name: c.config for name, c in self.connections.items()},
            max_bytes=self.settings.max_request_bytes,
        )
        if self.settings.http_port >= 0:
            self.side_port = SidePort(self.metrics, self.readiness, self.healthy)
            port = await self.side_port.start(self.settings.http_host, self.settings.http_port)
            log.info("side port listening", port=port)
        self.producer = AIOProducer(
            kafka_io.producer_config(self.settings, transactional_id=self.transactional_id),
            batch_size=10_000,
            buffer_timeout=0,
        )
        await self.producer.init_transactions(30)
        # Pauses stored in the control topic apply before the first request is read.
        self._apply_control(await read_control_state(self.settings))
        self._control = ControlFollower(self.settings, lambda state: self._results.put_nowait(ControlChange(state)))
        self._control.start()
        self.consumer = AIOConsumer(kafka_io.consumer_config(self.settings), max_workers=4)
        await self.consumer.subscribe(
            [self.topics.requests], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._started = True
        log.info(
            "worker started",
            transactional_id=self.transactional_id,
            topic=self.topics.requests,
            connections=sorted(self.connections),
        )

    async def _shutdown(self) -> None:
        """Stop taking requests, let in-flight calls finish within the grace period,
        commit, leave the group, close."""
        self._stopping = True
        deadline = time.monotonic() + self.settings.shutdown_grace_s * 0.8
        try:
            if self._crashed:
                log.error("worker loop failed: leaving without committing; the next owner resumes from Kafka")
                if self._committing is not None:
                    task = self._committing[0]
                    await asyncio.wait([task], timeout=30)  # do not leave it open
                    if not task.done():
                        self.producer_stuck = True  # closing it would wait for its thread forever
                    elif not task.cancelled():
                        task.exception()  # already reported by the loop's failure
            elif self.producer is not None and self.consumer is not None and not self.producer_stuck:
                # Intents written in the last turn still get their call: the state
                # says SUBMITTING, and a call made now saves the next owner a reconcile.
                await self._commit()
                await self._drain_in_flight(set(self.partitions), deadline)
                await self._commit()
        except Exception:
            log.exception("error while draining at shutdown")
        for task in list(self._restores):
            task.cancel()
        if self._control is not None:
            await self._control.stop()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.close()  # triggers on_revoke: commits whatever is left
        if self.producer is not None and not self.producer_stuck:  # closing joins its threads
            with contextlib.suppress(Exception):
                await self.producer.close()
        for tasks in self._in_flight.values():
            for task in tasks:
                task.cancel()
        if self.side_port is not None:
            await self.side_port.stop()
        if self._session is not None:
            await self._session.close()
        log.info("worker stopped")

    def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if not self._joined:
            return False, "joining the consumer group"
        if self._stopping:
            return False, "stopping"
        restoring = sorted(p.number for p in self.partitions.values() if not p.ready)
        if restoring:
            return False, f"restoring partitions {restoring}"
        return True, f"owns partitions {sorted(self.partitions)}"

    def open_job_counts(self) -> dict[tuple[str, str], int]:
        tally: Tally[tuple[str, str]] = Tally()
        for part in list(self.partitions.values()):
            for state in list(part.jobs.values()):
                if state.phase is not Phase.DONE:
                    tally[(state.vendor, state.status.value)] += 1
        return dict(tally)

    def open_jobs(self) -> int:
        return sum(sum(1 for s in p.jobs.values() if s.phase is not Phase.DONE) for p in self.partitions.values())

    # ---- the loop ------------------------------------------------------------------

    async def _loop(self, stopper: asyncio.Task[Any]) -> None:
        assert self.consumer is not None
        loop_task = asyncio.current_task()
        watchdog = asyncio.create_task(self._watch(loop_task))
        try:
            while not stopper.done():
                self.last_turn = time.monotonic()
                messages = await self.consumer.consume(self.settings.consume_batch, self._consume_timeout())
                await self._turn(messages)
        finally:
            watchdog.cancel()

    async def _watch(self, loop_task: asyncio.Task[Any] | None) -> None:
        """Say where the loop is stuck when a turn takes far too long; /healthz then fails
        too, so a supervisor restarts the process (the next owner resumes from Kafka)."""
        warned = 0.0
        while True:
            await asyncio.sleep(5.0)
            stalled = time.monotonic() - self.last_turn
            if stalled > 30.0 and time.monotonic() - warned > 30.0 and loop_task is not None:
                warned = time.monotonic()
                log.error("worker loop stalled", seconds=round(stalled), where=_where(loop_task), waiting_on=_stacks())

    def healthy(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_turn
        if self._started and stalled > self.settings.stall_timeout_s:
            return False, f"worker loop stalled for {stalled:.0f} s"
        return True, "ok"

    def _consume_timeout(self) -> float:
        if not self._results.empty():
            return 0.0
        busy = (
            self._committing is not None
            or bool(self._waiting_calls)
            or any(self._in_flight.values())
            or any(c.waiting or c.waiting_submits for c in self.connections.values())
        )
        if busy or self._pending() or self._restores:
            return 0.02
        nxt = self._timers.next_due_ms()
        if nxt is None:
            return 0.25
        return max(0.0, min(0.25, (nxt - self._now_ms()) / 1000))

    async def _turn(self, messages: list[Any]) -> None:
        if self._committing is not None and self._committing[0].done():
            await self._await_commit()
        if self.producer_stuck:  # noticed inside a rebalance callback, which must not raise
            raise ProducerStuck("the transactional producer is stuck")
        if time.monotonic() - self._lag_checked > 5.0:
            await self._measure_lag()
        await self._on_messages(messages)
        await self._apply_results()
        self._fire_timers()
        self._retry_waiting_calls()
        if self._pending():
            if not self._first_pending:
                self._first_pending = time.monotonic()
            due = time.monotonic() - self._first_pending >= self.settings.commit_interval_ms / 1000
            # Vendor calls waiting for their intent to be durable do not wait for the interval.
            if len(self._outgoing) + len(self._states) >= 50_000:
                await self._commit()  # backpressure: let the broker catch up
            elif (due or self._after_commit) and self._committing is None:
                await self._start_commit()

    async def _measure_lag(self) -> None:
        """Consumer lag per owned partition from the watermarks of the last fetch (no round trip)."""
        assert self.consumer is not None
        self._lag_checked = time.monotonic()
        ready = [TopicPartition(self.topics.requests, n) for n, p in self.partitions.items() if p.ready]
        if not ready:
            return
        for tp in await self.consumer.position(ready):
            _low, high = await self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - tp.offset))

    def _pending(self) -> bool:
        return bool(self._outgoing or self._states or self._offsets_dirty)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ---- requests ------------------------------------------------------------------

    async def _on_messages(self, messages: list[Any]) -> None:
        assert self.ingest is not None and self.consumer is not None
        rewind: dict[int, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error", error=err.str())
                continue
            number = msg.partition()
            part = self.partitions.get(number)
            if part is None:
                continue  # not ours (any more): the owner reads it
            if not part.ready:
                # Fetched before the pause (or before a reset's rewind) took effect: read
                # it again once restored, from where the reset rewound to if there was one.
                rewind.setdefault(number, part.resume_at if part.resume_at is not None else msg.offset())
                continue
            if number in rewind:
                continue
            try:
                await self._on_request(part, msg)
            except (WorkerFenced, RegistryUnavailable, KafkaException):
                raise
            except Exception as exc:  # a request we cannot handle must not stop its partition
                log.exception("request could not be processed; dead-lettered", partition=number, offset=msg.offset())
                self._dead_letter(
                    part, msg, Rejection("internal_error", f"{type(exc).__name__}: {exc}"), self._now_ms()
                )
                part.next_offset = msg.offset() + 1
        for number, offset in rewind.items():
            await self.consumer.seek(TopicPartition(self.topics.requests, number, offset))

    async def _on_request(self, part: OwnedPartition, msg: Any) -> None:
        assert self.ingest is not None
        self._offsets_dirty = True
        now = self._now_ms()
        outcome = await self.ingest.read(msg.key(), msg.value(), partition=part.number, offset=msg.offset(), now_ms=now)
        if isinstance(outcome, Rejection):
            if outcome.event is not None:
                self._step(part, outcome.event.request_id, outcome.event)
            self._dead_letter(part, msg, outcome, now)
        else:
            self.metrics.child(self.metrics.requests, "read").inc()
            self._step(part, outcome.request_id, _received(outcome))
        part.next_offset = msg.offset() + 1

    def _dead_letter(self, part: OwnedPartition, msg: Any, rejection: Rejection, now_ms: int) -> None:
        self.metrics.dead_letters.labels(rejection.reason_code).inc()
        self.metrics.requests.labels("dead_lettered").inc()
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
        value = msg.value()
        if value is not None and len(value) > self.settings.max_request_bytes:
            value = value[: self.settings.max_request_bytes]  # the dead letter must fit in a record too
        record = dead_letter_record(
            topic=msg.topic(),
            partition=part.number,
            offset=msg.offset(),
            timestamp_ms=ts if ts_type != 0 else None,
            key=msg.key(),
            value=value,
            headers=[(k, v) for k, v in (msg.headers() or [])],
            reason_code=rejection.reason_code,
            reason=redact_text(rejection.reason),
            failed_at_ms=now_ms,
            request_id=request_id,
            worker=self.transactional_id,
        )
        self._emit(part.number, self.topics.dlq, msg.key() or b"", "DeadLetter", record, None)

    # ---- engine steps ----------------------------------------------------------------

    def _step(self, part: OwnedPartition, request_id: str, event: Event, *, slot: Connection | None = None) -> None:
        state = part.jobs.get(request_id)
        conn_name = (
            state.connection if state is not None else getattr(getattr(event, "request", event), "connection", "")
        )
        conn = self.connections.get(conn_name)
        policy = conn.policy if conn is not None else _FALLBACK_POLICY
        transition = step(state, event, Context(self._now_ms(), self.rng.random(), policy))
        new = transition.state
        # Every record is built (and encoded) before anything changes: a failure here
        # leaves the job exactly as it was.
        records: list[Outgoing] = []
        call: Call | None = None
        for effect in transition.effects:
            assert new is not None
            if isinstance(effect, PublishStatus):
                value = self.codec.encode("JobStatusChanged", status_record(new, effect), topic=self.topics.status)
                records.append(Outgoing(part.number, self.topics.status, request_id.encode(), value, None))
            elif isinstance(effect, Announce):
                value = self.codec.encode("FileReady", file_record(new, effect), topic=self.topics.files)
                records.append(Outgoing(part.number, self.topics.files, request_id.encode(), value, None))
            elif isinstance(effect, CallVendor) and conn is not None:
                call = Call(part.number, part.incarnation, request_id, effect.kind, conn, new, slot is not None)
        if new is None:
            part.jobs.pop(request_id, None)
        else:
            part.jobs[request_id] = new
        if (transition.persist or records) and not self._pending():
            self._first_pending = time.monotonic()
        if transition.persist:
            self._states[(part.number, request_id)] = new
        self._outgoing.extend(records)
        for effect in transition.effects:
            assert new is not None
            if isinstance(effect, PublishStatus):
                self.metrics.child(self.metrics.status_events, new.vendor, effect.status.value).inc()
                log.info(
                    "status",
                    request_id=request_id,
                    vendor=new.vendor,
                    connection=new.connection,
                    vendor_job_id=new.vendor_job_id,
                    status=effect.status.value,
                    previous=effect.previous_status.value if effect.previous_status else None,
                    sequence=effect.sequence,
                    error=effect.error.message if effect.error else None,
                )
            elif isinstance(effect, Announce):
                self.metrics.child(self.metrics.files, new.vendor).inc()
        if call is not None:
            if transition.persist:
                if not call.has_slot:
                    call.intent = True
                    call.connection.intents += 1
                self._after_commit.append(call)  # e.g. the SUBMITTING intent must be durable first
            else:
                self._dispatch(call)
        elif slot is not None:
            slot.limiter.release()
        if (
            new is not None
            and new.next_action_at_ms > 0
            and (state is None or new.next_action_at_ms != state.next_action_at_ms)
        ):
            self._timers.schedule(new.next_action_at_ms, part.number, request_id)

    def _emit(
        self, partition: int, topic: str, key: bytes, schema: str, record: dict[str, Any], target: int | None
    ) -> None:
        if not self._pending():
            self._first_pending = time.monotonic()
        value = self.codec.encode(schema, record, topic=topic)
        self._outgoing.append(Outgoing(partition, topic, key, value, target))

    # ---- timers ----------------------------------------------------------------------

    def _fire_timers(self) -> None:
        """Hand due jobs to their connection's queue; admit as many as it has capacity for."""
        if self._stopping:
            return
        now_ms = self._now_ms()
        for due, number, request_id in self._timers.pop_due(now_ms, TIMERS_PER_TURN):
            part = self.partitions.get(number)
            if part is None or not part.ready or part.revoking:
                continue
            state = part.jobs.get(request_id)
            if state is None or state.next_action_at_ms != due:
                continue  # stale entry: the job moved on
            if state.phase is Phase.DONE:
                self._step(part, request_id, TimerFired())  # expiry or retention: no vendor call
                continue
            conn = self.connections.get(state.connection)
            if conn is None:
                self._step(part, request_id, _no_connection(state))
                continue
            (conn.waiting_submits if state.phase is Phase.PENDING else conn.waiting).append((number, request_id, due))
        self._admit_waiting(now_ms)

    def _admit_waiting(self, now_ms: int) -> None:
        mono = time.monotonic()
        for conn in self.connections.values():
            self._admit_calls(conn, now_ms, mono)
            self._admit_submits(conn, now_ms, mono)

    def _due(self, entry: tuple[int, str, int]) -> tuple[OwnedPartition, JobState] | None:
        """The job of a queue entry, if it is still owned and still due at that time."""
        number, request_id, due = entry
        part = self.partitions.get(number)
        if part is None or part.revoking:
            return None
        state = part.jobs.get(request_id)
        if state is None or state.next_action_at_ms != due:
            return None
        return part, state

    def _admit_calls(self, conn: Connection, now_ms: int, mono: float) -> None:
        queue = conn.waiting
        while queue:
            found = self._due(queue[0])
            if found is None:
                queue.popleft()  # moved on, or its partition is gone
                continue
            if not conn.limiter.try_acquire(mono):
                return  # at capacity, rate-limited or blocked by a 429: wait in line
            _, request_id, due = queue.popleft()
            self.metrics.poll_lateness.observe(max(0, now_ms - due) / 1000)
            self._step(found[0], request_id, TimerFired(), slot=conn)

    def _admit_submits(self, conn: Connection, now_ms: int, mono: float) -> None:
        queue = conn.waiting_submits
        while queue:
            found = self._due(queue[0])
            if found is None:
                queue.popleft()
                continue
            if conn.limiter.paused:
                number, request_id, _ = queue.popleft()
                conn.parked.append((number, request_id))
                continue
            # A submit takes its call slot only once its intent is durable, so slots are
            # not held through a commit; the intents waiting for one are bounded.
            if conn.intents >= INTENTS_PER_SLOT * conn.limiter.max_concurrency or mono < conn.limiter.blocked_until:
                return
            _, request_id, due = queue.popleft()
            self.metrics.poll_lateness.observe(max(0, now_ms - due) / 1000)
            self._step(found[0], request_id, TimerFired())

    def _apply_control(self, control: ControlState) -> None:
        for conn in self.connections.values():
            paused = control.is_paused(conn.name, conn.config.vendor)
            if paused and not conn.limiter.paused:
                conn.limiter.paused = True
                log.warning("connection paused: no new submits, open jobs keep polling", connection=conn.name)
            elif not paused and conn.limiter.paused:
                self.resume(conn.name)
                log.warning("connection resumed", connection=conn.name)

    def resume(self, connection: str) -> None:
        conn = self.connections[connection]
        conn.limiter.paused = False
        now = self._now_ms()
        for number, request_id in conn.parked:
            part = self.partitions.get(number)
            state = part.jobs.get(request_id) if part else None
            if part is not None and state is not None and state.phase is Phase.PENDING:
                part.jobs[request_id] = replace(state, next_action_at_ms=now)
                self._timers.schedule(now, number, request_id)
        conn.parked.clear()

    # ---- vendor calls ----------------------------------------------------------------

    def _dispatch(self, call: Call) -> None:
        part = self.partitions.get(call.partition)
        if part is None or part.incarnation != call.incarnation or part.revoking:
            self._abandon(call)
            return
        if not call.has_slot:
            if not call.connection.limiter.try_acquire(time.monotonic()):
                self._waiting_calls.append(call)
                return
            call.has_slot = True
        self._call_started(call)
        task = asyncio.create_task(self._run_call(call))
        tasks = self._in_flight.setdefault(call.partition, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @staticmethod
    def _call_started(call: Call) -> None:
        if call.intent:
            call.intent = False
            call.connection.intents -= 1

    def _abandon(self, call: Call) -> None:
        """A call that will never start: give back its intent and its slot."""
        self._call_started(call)
        if call.has_slot:
            call.connection.limiter.release()

    def _retry_waiting_calls(self) -> None:
        if not self._waiting_calls:
            return
        waiting, self._waiting_calls = self._waiting_calls, []
        for call in waiting:
            self._dispatch(call)

    async def _run_call(self, call: Call) -> None:
        state = call.state
        conn = call.connection
        adapter = conn.adapter
        event: Event
        try:
            spec = JobSpec.from_json(
                state.request_id,
                state.tenant,
                state.connection,
                state.job_json,
                correlation_id=state.correlation_id,
                submit_attempt=state.submit_attempt,
                labels=state.labels,
            )
            # Each call runs in its own task, whose context copy ends with it: bind once, no reset.
            structlog.contextvars.bind_contextvars(
                request_id=state.request_id,
                vendor=state.vendor,
                connection=conn.name,
                vendor_job_id=state.vendor_job_id,
            )
            event = await self._call_adapter(adapter, call.kind, spec, state)
        except VendorError as exc:
            if isinstance(exc, RateLimited):
                conn.limiter.block(time.monotonic(), exc.retry_after if exc.retry_after is not None else 1.0)
            event = CallFailed(
                kind=call.kind,
                error=ErrorInfo(exc.code, redact_text(exc.message), exc.retriable),
                retry_after_s=exc.retry_after,
                outcome_unknown=exc.outcome_unknown,
                busy=isinstance(exc, VendorBusy),
            )
            log.info(
                "vendor call failed",
                request_id=state.request_id,
                vendor=state.vendor,
                connection=conn.name,
                operation=call.kind.value,
                code=exc.code,
                error=exc.message,
            )
        except ExportWorkerError as exc:  # e.g. the result store refused an artifact: retry later
            code = "result_store_error" if isinstance(exc, ResultStoreError) else "worker_error"
            event = CallFailed(
                kind=call.kind,
                error=ErrorInfo(code, redact_text(str(exc)), exc.retriable),
                outcome_unknown=call.kind is CallKind.SUBMIT,
            )
            log.warning("vendor call failed", request_id=state.request_id, operation=call.kind.value, error=str(exc))
        except asyncio.CancelledError:
            conn.limiter.release()
            raise
        except Exception as exc:  # an adapter bug must not stop the worker; the job retries
            log.exception("vendor adapter crashed", request_id=state.request_id, operation=call.kind.value)
            event = CallFailed(
                kind=call.kind,
                error=ErrorInfo("adapter_error", redact_text(f"{type(exc).__name__}: {exc}"), True),
                outcome_unknown=call.kind is CallKind.SUBMIT,
            )
        conn.limiter.release()
        raw = getattr(event, "vendor_status", None)
        if raw is not None and type(event) is not CallFailed:
            # A handful of vendor status names, held by every open job: keep one copy.
            event = replace(event, vendor_status=sys.intern(raw))  # type: ignore[type-var]
        self._results.put_nowait(CallResult(call.partition, call.incarnation, call.request_id, event))

    async def _call_adapter(self, adapter: VendorAdapter, kind: CallKind, spec: JobSpec, state: JobState) -> Event:
        if kind is CallKind.SUBMIT:
            return await adapter.submit(spec)
        if kind is CallKind.RECONCILE:
            return await adapter.reconcile(spec)
        assert state.vendor_job_id is not None
        if kind is CallKind.CANCEL:
            if not isinstance(adapter, Cancellable):
                raise VendorError(f"{state.vendor} has no cancel call")
            return await adapter.cancel(spec, state.vendor_job_id)
        return await adapter.poll(spec, state.vendor_job_id)

    async def _apply_results(self) -> None:
        while not self._results.empty():
            item = self._results.get_nowait()
            if isinstance(item, RestoreDone):
                await self._install(item)
                continue
            if isinstance(item, ControlChange):
                self._apply_control(item.state)
                continue
            part = self.partitions.get(item.partition)
            if part is None or part.incarnation != item.incarnation:
                continue  # the partition moved or was reset meanwhile: its new owner redoes it
            self._step(part, item.request_id, item.event)

    async def _drain_in_flight(self, numbers: set[int], deadline: float) -> None:
        tasks = set().union(*(self._in_flight.get(n, set()) for n in numbers)) if numbers else set()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        await self._apply_results()

    # ---- transactions ----------------------------------------------------------------

    async def _commit(self, group_metadata: Any = None) -> None:
        """Commit everything pending now, after any commit already in flight."""
        await self._await_commit()
        batch = await self._cut_batch(group_metadata)
        if batch is not None:
            await self._settle(batch, await self._write(batch))

    async def _start_commit(self) -> None:
        """Cut a batch and write it in the background while the loop keeps working; the
        next batch waits for this one (transactions are strictly one after another)."""
        batch = await self._cut_batch()
        if batch is not None:
            self._committing = (asyncio.create_task(self._write(batch)), batch)

    async def _await_commit(self) -> None:
        if self._committing is None:
            return
        task, batch = self._committing
        self._committing = None
        await self._settle(batch, await task)

    async def _cut_batch(self, group_metadata: Any = None) -> Batch | None:
        """Take the pending records, the calls waiting on them and the consumer's
        positions (everything consumed so far has been turned into those records)."""
        assert self.consumer is not None
        if not self._pending():
            self._first_pending = 0.0
            return None
        outgoing, self._outgoing = self._outgoing, []
        states, self._states = self._states, {}
        jobs = self.topics.jobs
        for (number, request_id), state in states.items():
            value = None if state is None else self.codec.encode("JobState", state_to_record(state), topic=jobs)
            outgoing.append(Outgoing(number, jobs, request_id.encode(), value, number))
        calls, self._after_commit = self._after_commit, []
        self._offsets_dirty = False
        self._first_pending = 0.0
        offsets = self._positions()
        metadata = (group_metadata or await self.consumer.consumer_group_metadata()) if offsets else None
        incarnations = {n: p.incarnation for n, p in self.partitions.items()}
        return Batch(outgoing, calls, offsets, metadata, incarnations)

    async def _write(self, batch: Batch) -> KafkaException | None:
        """Write one batch in one Kafka transaction; never touches the consumer (a
        rebalance callback may be waiting for it while the consumer is busy).

        1. begin: nothing visible yet; a crash here loses nothing (inputs are re-read).
        2. produce every record (export.jobs to the request's own partition).
        3. send the consumer's positions with the group metadata: the coordinator
           refuses them if this worker no longer owns its partitions (zombie fencing).
        4. commit: all of it becomes visible to read_committed readers at once.
        Then (``_settle``) the vendor calls waiting for their intent to be durable start.
        """
        assert self.producer is not None
        producer = self.producer
        started = time.monotonic()
        try:
            await producer.begin_transaction()
            futures = []
            for out in batch.outgoing:
                if out.target_partition is None:
                    futures.append(await producer.produce(out.topic, value=out.value, key=out.key))
                else:
                    futures.append(
                        await producer.produce(out.topic, value=out.value, key=out.key, partition=out.target_partition)
                    )
            # A record the producer refused (e.g. too large) must not be silently left
            # out of a committed transaction: check every delivery first.
            await producer.flush(60)
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise (
                        result
                        if isinstance(result, KafkaException)
                        else KafkaException(KafkaError(KafkaError._FAIL, f"record not delivered: {result}"))
                    )
            if batch.offsets:
                await self._bounded(producer.send_offsets_to_transaction(batch.offsets, batch.metadata, 30), 30)
            await self._bounded(producer.commit_transaction(60), 60)
        except KafkaException as exc:
            return exc
        self.metrics.transactions.labels("committed").inc()
        self.metrics.commit_seconds.observe(time.monotonic() - started)
        self.metrics.commit_records.observe(len(batch.outgoing))
        return None

    async def _bounded(self, call: Any, timeout_s: float) -> None:
        """Await a transactional call, enforcing its timeout from this side too."""
        limit = timeout_s + self.stuck_margin_s
        try:
            await asyncio.wait_for(call, limit)
        except TimeoutError:
            self.producer_stuck = True
            raise ProducerStuck(f"a transactional call did not return within {limit:.0f} s") from None

    async def _settle(self, batch: Batch, error: KafkaException | None) -> None:
        if error is not None and _generation_moved(error) and not self._crashed:
            # A rebalance bumped the group generation while this batch was in flight: its
            # records are still right for the partitions still owned; write them again.
            log.info("transaction refused after a rebalance; writing it again", error=error.args[0].str())
            self.metrics.transactions.labels("retried").inc()
            with contextlib.suppress(KafkaException):
                await self.producer.abort_transaction(30)  # type: ignore[union-attr]
            batch = self._still_owned(batch)
            error = await self._write(await self._refresh(batch))
        if error is not None:
            for call in batch.calls:
                self._abandon(call)
            await self._transaction_failed(error)
            return
        for call in batch.calls:
            self._dispatch(call)

    def _still_owned(self, batch: Batch) -> Batch:
        def owned(number: int) -> bool:
            part = self.partitions.get(number)
            return part is not None and part.incarnation == batch.incarnations.get(number)

        for call in batch.calls:
            if not owned(call.partition):
                self._abandon(call)
        return Batch(
            [o for o in batch.outgoing if owned(o.partition)],
            [c for c in batch.calls if owned(c.partition)],
            [tp for tp in batch.offsets if owned(tp.partition)],
            batch.metadata,
            batch.incarnations,
        )

    async def _refresh(self, batch: Batch) -> Batch:
        assert self.consumer is not None
        metadata = await self.consumer.consumer_group_metadata() if batch.offsets else None
        return Batch(batch.outgoing, batch.calls, batch.offsets, metadata, batch.incarnations)

    def _positions(self) -> list[TopicPartition]:
        """The offsets to commit: what was fully processed on each ready partition."""
        return [
            TopicPartition(self.topics.requests, n, p.next_offset)
            for n, p in self.partitions.items()
            if p.ready and p.next_offset is not None
        ]

    async def _transaction_failed(self, exc: KafkaException) -> None:
        error: KafkaError = exc.args[0]
        self.metrics.transactions.labels("aborted").inc()
        if error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            log.error("transactional producer fenced: another worker owns this work now", error=error.str())
            raise WorkerFenced(error.str())
        log.warning("transaction failed; aborting and restoring owned partitions", error=error.str())
        with contextlib.suppress(KafkaException):
            await self.producer.abort_transaction(30)  # type: ignore[union-attr]
        # In-memory state ran ahead of what is durable: rebuild it from Kafka.
        await self._resync(set(self.partitions))

    async def _resync(self, numbers: set[int]) -> None:
        """Forget in-memory state of these partitions and read it back from Kafka,
        rewinding the consumer to the committed offsets."""
        assert self.consumer is not None
        if not numbers:
            return
        tps = [TopicPartition(self.topics.requests, n) for n in numbers]
        await self.consumer.pause(tps)
        # Let calls in flight end first: a submit still running while the restored intent
        # is reconciled could create a job the reconcile does not see yet.
        await self._drain_in_flight(numbers, time.monotonic() + self.settings.revoke_drain_s)
        committed = await self.consumer.committed(tps, timeout=30)
        for tp in committed:
            if tp.error is not None:  # unknown is not "none": never rewind to the beginning on it
                raise KafkaException(tp.error)
        self._discard_uncommitted(numbers)
        resume_at = {}
        for tp in committed:
            # No committed offset yet: start over from the beginning (auto.offset.reset=earliest).
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            await self.consumer.seek(TopicPartition(self.topics.requests, tp.partition, offset))
            resume_at[tp.partition] = offset
        self._begin_restore(numbers, resume_at)

    # ---- rebalancing -----------------------------------------------------------------

    async def _on_assign(self, consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        await consumer.incremental_assign(partitions)
        self._joined = True
        ours = [tp for tp in partitions if tp.topic == self.topics.requests]
        if not ours:
            return
        await consumer.pause(ours)
        numbers = {tp.partition for tp in ours}
        log.info("partitions assigned", partitions=sorted(numbers))
        self._begin_restore(numbers)
        self.metrics.assigned.set(len(self.partitions))

    def _begin_restore(self, numbers: set[int], resume_at: dict[int, int] | None = None) -> None:
        incarnations = {}
        for n in numbers:
            self._incarnation += 1
            self.partitions[n] = OwnedPartition(n, self._incarnation, resume_at=(resume_at or {}).get(n))
            incarnations[n] = self._incarnation
        task = asyncio.create_task(self._restore(incarnations))
        self._restores.add(task)
        task.add_done_callback(self._restores.discard)

    async def _restore(self, incarnations: dict[int, int]) -> None:
        """Read these partitions' job states (and the group's committed offsets) until it
        works: the partitions stay paused until then, so giving up would strand them."""
        attempt = 0
        while True:
            try:
                done = await self._read_back(incarnations)
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                log.exception("restore failed; retrying", partitions=sorted(incarnations), attempt=attempt)
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
                if all(
                    self.partitions.get(n) is None or self.partitions[n].incarnation != i
                    for n, i in incarnations.items()
                ):
                    return  # moved on meanwhile
                continue
            self._results.put_nowait(done)
            return

    async def _read_back(self, incarnations: dict[int, int]) -> RestoreDone:
        started = time.monotonic()
        numbers = sorted(incarnations)
        restored = await kafka_io.restore(self.settings, self.topics.jobs, numbers, admin=self.admin)
        states: dict[int, list[JobState]] = {}
        for part in restored:
            decoded = []
            for key, value in part.values.items():
                try:
                    decoded.append(state_from_record(await self.codec.decode_async("JobState", value)))
                except DecodeError as exc:  # a state we cannot read must not stop the others
                    log.error("unreadable job state skipped", key=key.decode("utf-8", "replace"), error=str(exc))
            states[part.partition] = decoded
        committed = await self._committed(numbers)
        return RestoreDone(incarnations, states, time.monotonic() - started, committed)

    async def _committed(self, numbers: list[int]) -> dict[int, int]:
        """The group's committed offsets of these partitions, best effort.

        Only a starting point for the offsets this worker commits: without it nothing is
        committed for a partition until its next request is processed, which is safe. A
        lookup that does not answer (a dead owner's transaction still pending, a broker
        just restarted) must not keep the partition paused, so it is not retried."""
        assert self.consumer is not None
        tps = [TopicPartition(self.topics.requests, n) for n in numbers]
        try:
            # One lookup at a time: each holds a consumer thread, and a rebalance callback
            # running meanwhile needs free ones for its own consumer calls.
            async with self._committed_lookup:
                found = await self.consumer.committed(tps, timeout=10)
        except KafkaException as exc:
            log.warning("committed offsets unknown; resuming without them", partitions=numbers, error=str(exc))
            return {}
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0 and tp.error is None}

    async def _install(self, done: RestoreDone) -> None:
        assert self.consumer is not None
        ready = []
        total = 0
        for number, incarnation in done.incarnations.items():
            part = self.partitions.get(number)
            if part is None or part.incarnation != incarnation:
                continue
            for state in done.states.get(number, []):
                conn = self.connections.get(state.connection)
                ctx = Context(self._now_ms(), self.rng.random(), conn.policy if conn else _FALLBACK_POLICY)
                resumed = step(state, Restored(), ctx).state
                assert resumed is not None
                part.jobs[state.request_id] = resumed
                if resumed.next_action_at_ms > 0:
                    self._timers.schedule(resumed.next_action_at_ms, number, state.request_id)
                total += 1
            part.ready = True
            part.next_offset = done.committed.get(number)
            ready.append(TopicPartition(self.topics.requests, number))
        if ready:
            await self.consumer.resume(ready)
        self.metrics.restore_seconds.observe(done.seconds)
        self.metrics.restored_jobs.inc(total)
        log.info(
            "partitions restored",
            partitions=sorted(tp.partition for tp in ready),
            jobs=total,
            seconds=round(done.seconds, 3),
        )

    async def _on_revoke(self, consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions if tp.topic == self.topics.requests}
        if not numbers:
            return
        for n in numbers:
            if n in self.partitions:
                self.partitions[n].revoking = True
        metadata = await consumer.consumer_group_metadata()
        if self.producer is not None and not self._crashed and not self.producer_stuck:
            deadline = time.monotonic() + (0 if self._stopping else self.settings.revoke_drain_s)
            await self._drain_in_flight(numbers, deadline)
            try:
                await self._commit(metadata)
            except WorkerFenced:
                log.error("fenced while handing partitions over", partitions=sorted(numbers))
        self._drop(numbers)
        log.info("partitions revoked", partitions=sorted(numbers))

    async def _on_lost(self, consumer: AIOConsumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions if tp.topic == self.topics.requests}
        log.warning("partitions lost (session expired): dropping uncommitted work", partitions=sorted(numbers))
        self._discard_uncommitted(numbers)
        self._drop(numbers)

    def _discard_uncommitted(self, numbers: set[int]) -> None:
        """Drop these partitions' records not yet cut into a transaction, and the calls
        that were waiting for them to be committed."""
        self._outgoing = [o for o in self._outgoing if o.partition not in numbers]
        self._states = {k: v for k, v in self._states.items() if k[0] not in numbers}
        keep = []
        for call in self._after_commit:
            if call.partition in numbers:
                self._abandon(call)
            else:
                keep.append(call)
        self._after_commit = keep

    def _drop(self, numbers: set[int]) -> None:
        for n in numbers:
            self.partitions.pop(n, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(n))
            for task in self._in_flight.pop(n, set()):
                task.cancel()
        for call in self._waiting_calls:
            if call.partition in numbers:
                self._call_started(call)
        self._waiting_calls = [c for c in self._waiting_calls if c.partition not in numbers]
        for conn in self.connections.values():
            conn.parked = [(p, r) for p, r in conn.parked if p not in numbers]
            conn.waiting = deque(w for w in conn.waiting if w[0] not in numbers)
            conn.waiting_submits = deque(w for w in conn.waiting_submits if w[0] not in numbers)
        self._timers.compact(set(self.partitions))
        self.metrics.assigned.set(len(self.partitions))


_FALLBACK_POLICY = Policy()


def _where(task: asyncio.Task[Any]) -> str:
    return " -> ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in task.get_stack(limit=16))


def _stacks() -> dict[str, str]:
    """Every task's and thread's innermost frames: what a stalled loop is waiting on."""
    found = {f"task {t.get_name()}": _where(t) for t in asyncio.all_tasks() if not t.done()}
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        frames = traceback.extract_stack(frame)[-6:]
        found[f"thread {names.get(ident, ident)}"] = " -> ".join(f"{f.name}:{f.lineno}" for f in frames)
    return found


def _received(request: RequestInfo) -> Event:
    return RequestReceived(request)


def _no_connection(state: JobState) -> Event:
    kind = CallKind.SUBMIT if state.phase in (Phase.PENDING, Phase.SUBMITTING) else CallKind.POLL
    return CallFailed(
        kind=kind,
        error=ErrorInfo("unknown_connection", f"connection {state.connection!r} is no longer configured", False),
    )


_GENERATION_CODES = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.FENCED_INSTANCE_ID}
)


def _generation_moved(error: KafkaException) -> bool:
    """send_offsets_to_transaction refused because the group rebalanced meanwhile."""
    code = error.args[0].code() if error.args else None
    return code in _GENERATION_CODES and not error.args[0].fatal()
