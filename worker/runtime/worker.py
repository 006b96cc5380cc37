"""The worker process: wiring, lifecycle, and the turn script.

One asyncio task (the *loop*) owns every job state. Each turn it:

  1. settles the transaction written in the background, if it finished,
  2. takes a batch of requests: each becomes engine steps, or a dead letter (``Intake``),
  3. applies what background work reported: vendor answers, restores, pauses (mailbox),
  4. fires due timers and admits due jobs to their connection (``CallDispatcher``),
     then pauses or resumes reading requests by the open jobs (``IntakeGate``),
  5. cuts everything produced so far into ONE Kafka transaction with the input offsets,
     every ``commit_interval_ms`` (``TransactionWriter``),
  6. and only once that is committed, starts the vendor calls those steps asked for.

Rebalance callbacks run while the loop is parked inside ``consume()``, so they may
touch the state too: on revoke they let in-flight calls finish (bounded), commit, and
drop the partitions; on assign they pause the new partitions until their slice of
export.jobs is restored (``Restorer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from typing import Any

import structlog
from confluent_kafka import TopicPartition

from worker import kafka as kafka_io
from worker.budgets import Ownership
from worker.codec import Codec
from worker.config import ConnectionConfig, Settings
from worker.control import ControlFollower, read_control_state
from worker.errors import ProducerStuck, WorkerFenced
from worker.ingest import Ingest
from worker.observability import Metrics, SidePort
from worker.registry import registry_for
from worker.result_store import ResultStore, result_store_from_url
from worker.runtime.backpressure import IntakeGate
from worker.runtime.calls import Call
from worker.runtime.clients import (
    Clock,
    ConsumerFactory,
    GroupConsumer,
    ProducerFactory,
    TransactionalProducer,
    aio_consumer,
    threaded_producer,
)
from worker.runtime.connections import Connection, build_connections, load_connection_configs
from worker.runtime.dispatcher import CallDispatcher
from worker.runtime.intake import Intake
from worker.runtime.mailbox import CallAnswered, ControlChanged, Mailbox, RestoreDone
from worker.runtime.outbox import Outbox
from worker.runtime.partitions import Partitions
from worker.runtime.refused import RefusedRecords
from worker.runtime.restorer import COMMITTED_LOOKUP_TIMEOUT_S, Carried, LogStarts, Restorer, StateReader
from worker.runtime.state_reader import StoreReader
from worker.runtime.stepper import Stepper
from worker.runtime.store_writer import StoreWriter
from worker.runtime.sweeper import Sweeper
from worker.runtime.transactions import Outcome, Settled, TransactionWriter
from worker.runtime.trimmer import MemoryTrimmer
from worker.runtime.watchdog import LoopWatchdog
from worker.store import StoreError, StoreMemory, StoreOptions, StoreSet
from worker.store.cleanup import DEPARTED_MIN_AGE_MS, CleanupPolicy
from worker.tracing import Tracing
from worker.vendors import HttpClient, HttpLimits, vendor_session
from worker.version import __version__

log = structlog.get_logger("export_worker")

# While calls, restores or a commit are under way the loop waits on its mailbox (at most
# this long: until a transaction ends, a stop, or an answer while calls wait for a slot)
# and then reads the requests already fetched without waiting; else consume() waits for
# requests until the next timer (capped). Not at all when reports or a finished
# transaction are waiting, or the last consume() came back full.
BUSY_WAIT_S = 0.02
IDLE_WAIT_S = 0.25
# How long pending records wait for an input offset to fence their transaction with.
UNFENCED_WAIT_S = 15.0
# A partition store that fails again this soon after one was rebuilt: the disk is not
# usable, and the process exits (its supervisor restarts it; the next owner rebuilds).
STORE_FAILURES_WINDOW_S = 600.0
# How often stores of partitions no longer owned are looked at (removed once unused for
# state_cleanup_s), and the state dir's size checked.
STORE_CLEANUP_EVERY_S = 300.0
# At shutdown, how long the worker waits for the group to take its partitions back
# (unsubscribe, then consume() serves the revocation) before it closes the consumer anyway.
LEAVE_GROUP_S = 10.0
# The consume() calls that wait for that revocation.
LEAVE_POLL_S = 0.1
# A fenced transactional producer is replaced in place at most once this often; fenced
# again sooner, the process stops (see ``_replace_fenced_producer``).
PRODUCER_FENCES_WINDOW_S = 300.0


class Worker:
    """One worker process.

    Args:
        settings: topics, Kafka, timing.
        connections: connection configs by name (tests, demo); read from
            ``settings.connections_file`` when omitted.
        result_store: where collected artifacts go; from ``settings.result_store_url``
            when omitted.
        codec: wire codec; single-object encoding when omitted.
        clock: wall and monotonic time (time is an input to the engine).
        rng: source of jitter.
        metrics: metrics registry; a fresh one when omitted.
        consumer_factory, producer_factory: how the Kafka clients are made (the seams
            tests use to wrap them); confluent-kafka's asyncio clients when omitted.
        read_states: how a partition's open job states are read back; when omitted,
            export.jobs is folded into the partition stores under ``settings.state_dir``.
        log_starts: where the input partitions start (for those with nothing committed);
            when omitted, the admin client asks the broker.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connections: dict[str, ConnectionConfig] | None = None,
        result_store: ResultStore | None = None,
        codec: Codec | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        consumer_factory: ConsumerFactory = aio_consumer,
        producer_factory: ProducerFactory = threaded_producer,
        read_states: StateReader | None = None,
        log_starts: LogStarts | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.topics = settings.topics
        self.codec = codec or Codec()
        self.clock = clock or Clock()
        self.metrics = metrics or Metrics()
        self.transactional_id = f"{settings.group_id}-{settings.instance_id}"
        self._connection_configs = connections
        self._result_store = result_store
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self.admin = kafka_io.admin_client(settings)
        self.consumer: GroupConsumer | None = None
        self.producer: TransactionalProducer | None = None
        self._producer_replaced_at: float | None = None
        self._fenced: str | None = None  # the producer was fenced and not replaced: stop
        self.side_port: SidePort | None = None
        self._control: ControlFollower | None = None
        self._session: HttpClient | None = None
        self._started = False
        self._joined = False  # the first assignment (possibly empty) has come
        self._stopping = False
        self._stop_asked_at: float | None = None  # monotonic: the shutdown grace counts from here

        # The collaborators, in the order the data flows through them.
        self.connections: dict[str, Connection] = {}  # filled at start (adapters need the HTTP session)
        self.mailbox = Mailbox()
        self.partitions = Partitions(self.topics.requests)
        self.stores = StoreSet(
            settings.state_dir,
            group_id=settings.group_id,
            writer=settings.instance_id,
            memory=StoreMemory(StoreOptions.from_settings(settings)),
            cleanup_policy=CleanupPolicy.from_settings(settings),
        )
        self._store_failed_at: float | None = None
        self._stores_cleaned_at = 0.0
        self.outbox = Outbox(self.clock.monotonic)
        self.refused = RefusedRecords()
        self.dispatcher = CallDispatcher(
            self.connections,
            self.partitions,
            self.mailbox,
            self.clock,
            self.metrics,
            max_wait_s=settings.max_retry_after_s,
            budget_mode=settings.budget_mode,
        )
        self.dispatcher.tracing = self.tracing
        self._request_partitions = 0  # export.requests' partition count, known at start
        self.stepper = Stepper(
            connections=self.connections,
            outbox=self.outbox,
            dispatcher=self.dispatcher,
            codec=self.codec,
            topics=self.topics,
            clock=self.clock,
            rng=rng or random.Random(),
            metrics=self.metrics,
            refused=self.refused,
            stores=self.stores,
        )
        self.intake = Intake(
            settings,
            partitions=self.partitions,
            stepper=self.stepper,
            outbox=self.outbox,
            codec=self.codec,
            clock=self.clock,
            metrics=self.metrics,
            worker_id=self.transactional_id,
            refused=self.refused,
            tracing=self.tracing,
        )
        self.gate = IntakeGate.from_settings(settings, self.metrics)
        self.restorer = Restorer(
            partitions=self.partitions,
            read_states=read_states or StoreReader(settings, self.codec, self.admin, self.stores, self.metrics),
            stepper=self.stepper,
            dispatcher=self.dispatcher,
            mailbox=self.mailbox,
            metrics=self.metrics,
            log_starts=log_starts
            or functools.partial(
                kafka_io.log_starts, self.admin, self.topics.requests, timeout=COMMITTED_LOOKUP_TIMEOUT_S
            ),
            may_resume=self.gate.may_resume,
        )
        self.writer = TransactionWriter(
            outbox=self.outbox,
            partitions=self.partitions,
            codec=self.codec,
            jobs_topic=self.topics.jobs,
            metrics=self.metrics,
            stores=self.stores,
            tracing=self.tracing,
            # Trace contexts are kept in the current JobState version only; without
            # them, states are written as workers of the previous release read them.
            state_writer=None if self.tracing.enabled else self.codec.schemas.previous.get("JobState"),
        )
        self.store_writer = StoreWriter(
            partitions=self.partitions, stepper=self.stepper, jobs_topic=self.topics.jobs, metrics=self.metrics
        )
        self.sweeper = Sweeper(
            partitions=self.partitions, stepper=self.stepper, codec=self.codec, clock=self.clock, metrics=self.metrics
        )
        self.watchdog = LoopWatchdog(
            stall_timeout_s=settings.stall_timeout_s, partitions=self.partitions, metrics=self.metrics
        )
        self.trimmer = MemoryTrimmer(settings.memory_trim_s, self.metrics, self.clock.monotonic)
        self.metrics.watch_open_jobs(self.partitions.open_job_counts)
        self.metrics.store_memory.set_function(self.stores.memory.usage)
        self.metrics.exclusive_waiting.set_function(self.dispatcher.exclusive.waiting)

    @property
    def producer_stuck(self) -> bool:
        """A transactional call outlived its timeout: the process must exit (see ProducerStuck)."""
        return self.writer.stuck

    # ---- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or the task is cancelled), then shut down gracefully."""
        stop = stop or asyncio.Event()
        await self._start()
        stopper = asyncio.create_task(stop.wait())
        stopper.add_done_callback(self._note_stop)
        try:
            await asyncio.create_task(self._loop(stopper))
        except BaseException:
            self.writer.halted = True
            raise
        finally:
            stopper.cancel()
            await self._shutdown()

    def _note_stop(self, _: asyncio.Task[Any]) -> None:
        # The turn under way when the stop came (a rebalance's drain, say) counts against
        # the grace too: the drain at shutdown only gets what is left of it.
        self._stop_asked_at = time.monotonic()
        self.mailbox.wake()  # a loop waiting for reports stops at once

    async def _start(self) -> None:
        settings = self.settings
        counts = await kafka_io.ensure_topics(settings, self.admin)
        self._request_partitions = self.intake.request_partitions = counts.get(self.topics.requests, 0)
        if settings.schema_registry_url and self.codec.registry is None:
            self.codec.registry = await registry_for(settings, self.codec.schemas)
        configs = self._connection_configs
        if configs is None:
            configs = load_connection_configs(settings)
        # Vendors (and the simulators' chaos accounting) can tell which worker called.
        user_agent = f"export-worker/{__version__} ({settings.instance_id})"
        self._session = vendor_session(user_agent)
        result_store = self._result_store or result_store_from_url(settings.result_store_url)
        self.connections.update(
            build_connections(
                configs,
                self._session,
                self.metrics,
                result_store=result_store,
                limits=HttpLimits.from_settings(settings),
                tracing=self.tracing,
            )
        )
        self.dispatcher.open(self.connections)
        self.intake.open(
            Ingest(
                self.codec,
                {n: c.config for n, c in self.connections.items()},
                max_bytes=settings.max_request_bytes,
                max_record_bytes=settings.max_record_bytes,
            )
        )
        if settings.http_port >= 0:
            self.side_port = SidePort(self.metrics, self.readiness, self.watchdog.healthy)
            port = await self.side_port.start(settings.http_host, settings.http_port)
            log.info("side port listening", port=port)
        self.producer = self._new_producer()
        self.consumer = self._consumer_factory(kafka_io.consumer_config(settings))
        await self.writer.open(self.producer, self.consumer)
        self.restorer.open(self.consumer)
        # Pauses stored in the control topic apply before the first request is read.
        self.dispatcher.apply_control(await read_control_state(settings))
        self._control = ControlFollower(settings, lambda state: self.mailbox.put_nowait(ControlChanged(state)))
        self._control.start()
        self.dispatcher.announce = self._control.publish_block
        await self.consumer.subscribe(
            [self.topics.requests], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._started = self.watchdog.started = True
        log.info(
            "worker started",
            transactional_id=self.transactional_id,
            topic=self.topics.requests,
            connections=sorted(self.connections),
        )

    def _new_producer(self) -> TransactionalProducer:
        return self._producer_factory(kafka_io.producer_config(self.settings, transactional_id=self.transactional_id))

    async def _shutdown(self) -> None:
        """Stop taking requests, let in-flight calls finish within the grace period,
        commit, leave the group, close."""
        self._stopping = self.dispatcher.stopping = True
        deadline = (self._stop_asked_at or time.monotonic()) + self.settings.shutdown_grace_s * 0.8
        try:
            if self.writer.halted:
                log.error("worker loop failed: leaving without committing; the next owner resumes from Kafka")
                await self.writer.wait_abandoned(30)  # do not leave it open
            elif self.consumer is not None and self.writer.usable:
                # Intents written in the last turn still get their call: the state
                # says SUBMITTING, and a call made now saves the next owner a reconcile.
                await self._commit()
                await self._drain(set(self.partitions), deadline)
                await self._commit()
        except Exception:
            log.exception("error while draining at shutdown")
        self.restorer.cancel()
        if self._control is not None:
            await self._control.stop()
        if self.consumer is not None:
            await self._leave_group()
            with contextlib.suppress(Exception):
                await self.consumer.close()
        if self.producer is not None and not self.writer.stuck:  # closing joins its threads
            with contextlib.suppress(Exception):
                await self.producer.close()
        self.dispatcher.cancel_all()
        with contextlib.suppress(StoreError):
            self.stores.close_all()
        if self.side_port is not None:
            await self.side_port.stop()
        if self._session is not None:
            await self._session.close()
        await self.trimmer.close()
        log.info("worker stopped")

    async def _leave_group(self) -> None:
        """Hand the partitions back before closing: unsubscribe, and let consume() serve
        the revocation (``_on_revoke`` commits whatever is left). A revocation served
        inside close() instead can wait forever in librdkafka while the group is being
        torn down (librdkafka#4041, #4884), and the binding's own answer to it waits there
        holding the GIL: the whole process froze. With nothing assigned, close() has no
        revocation to serve. Records consume() returns here are not taken: the next owner
        reads them from the committed offsets."""
        assert self.consumer is not None
        deadline = time.monotonic() + LEAVE_GROUP_S
        try:
            await self.consumer.unsubscribe()
            while self.partitions and time.monotonic() < deadline:
                await self.consumer.consume(self.settings.consume_batch, LEAVE_POLL_S)
        except Exception as exc:
            log.warning("leaving the group before closing failed", error=str(exc))
        if self.partitions:
            log.warning("partitions not revoked before closing", partitions=sorted(self.partitions))

    def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if not self._joined:
            return False, "joining the consumer group"
        if self._stopping:
            return False, "stopping"
        restoring = self.partitions.restoring()
        if restoring:
            return False, f"restoring partitions {restoring}"
        return True, f"owns partitions {sorted(self.partitions)}"

    def healthy(self) -> tuple[bool, str]:
        return self.watchdog.healthy()

    # ---- the turn ------------------------------------------------------------------

    async def _loop(self, stopper: asyncio.Task[Any]) -> None:
        assert self.consumer is not None
        loop_task = asyncio.current_task()
        assert loop_task is not None
        self.watchdog.watch(loop_task)
        try:
            backlog = False  # the last consume() came back full: more requests are waiting
            while not stopper.done():
                self.watchdog.turn()
                timeout = await self._wait_for_work(backlog)
                messages = await self.consumer.consume(self.settings.consume_batch, timeout)
                backlog = len(messages) >= self.settings.consume_batch
                await self._turn(messages)
        finally:
            self.watchdog.stop()

    async def _turn(self, messages: list[Any]) -> None:
        assert self.consumer is not None
        if self.writer.written:
            await self._settle(await self.writer.finish())
        if self.writer.stuck:  # noticed inside a rebalance callback, which must not raise
            raise ProducerStuck("the transactional producer is stuck")
        if self._fenced is not None:  # likewise
            raise WorkerFenced(self._fenced)
        await self.watchdog.measure_lag(self.consumer)
        await self._rewind(await self.intake.take(messages))
        await self._apply_reports()
        self.dispatcher.fire_timers(self.stepper.apply)
        self.sweeper.run()
        if self.sweeper.failed:
            failed, self.sweeper.failed = self.sweeper.failed, set()
            await self._rebuild(failed)
        self.dispatcher.retry_waiting_calls()
        self.restorer.learn_missing_offsets(time.monotonic())
        self._clean_stores_when_due()
        self.trimmer.run_when_due()
        await self.gate.check(self.partitions.open_jobs(), self.consumer, self.partitions)
        await self._commit_when_due()

    def _clean_stores_when_due(self) -> None:
        now = time.monotonic()
        if now - self._stores_cleaned_at < STORE_CLEANUP_EVERY_S:
            return
        first = not self._stores_cleaned_at
        self._stores_cleaned_at = now
        try:
            if first:  # other instance ids' stores left on this disk (earlier runs)
                self.stores.remove_departed_instances(DEPARTED_MIN_AGE_MS, self.clock.now_ms())
            self.stores.cleanup(set(self.partitions), self.clock.now_ms())
        except OSError as exc:
            log.warning("state dir cleanup failed", error=str(exc))

    async def _wait_for_work(self, backlog: bool) -> float:
        """How long the next consume() may wait for requests: not at all when there is
        work now (reports, a finished transaction to settle, more requests fetched than
        the last consume() took); while background work is under way, after waiting for
        its first report; else until the next timer."""
        if backlog or self.writer.written or not self.mailbox.empty():
            return 0.0
        if self._busy():
            # An answer wakes the loop only when calls wait for the slot it frees: else
            # answers that come one by one (polls spread over time) are taken together.
            await self.mailbox.wait(self._until_due_s(), reports_wake=self.dispatcher.queued)
            return 0.0
        return self._consume_timeout()

    def _until_due_s(self) -> float:
        """How long the loop may wait for reports before it has work of its own:
        committing the records the outbox holds (at once for vendor calls that wait for
        their intent, else at the commit interval); ``BUSY_WAIT_S`` at most, for what does
        not report (timers, a call waiting for its connection's rate or a free slot)."""
        due = BUSY_WAIT_S
        if self.outbox.pending and not self.writer.writing and not self._unfenced():
            interval = 0.0 if self.outbox.calls else self.settings.commit_interval_ms / 1000
            due = min(due, interval - self.outbox.waited())
        return max(0.0, due)

    def _busy(self) -> bool:
        """Calls, restores or a commit under way, or records waiting for the next one."""
        return self.writer.writing or self.dispatcher.busy or self.outbox.pending or self.restorer.busy

    def _consume_timeout(self) -> float:
        """How long consume() may wait for requests when the loop is not busy."""
        nxt = self.dispatcher.next_due_ms()
        if nxt is None:
            return IDLE_WAIT_S
        return max(0.0, min(IDLE_WAIT_S, (nxt - self.clock.now_ms()) / 1000))

    async def _rewind(self, offsets: dict[int, int]) -> None:
        assert self.consumer is not None
        for number, offset in offsets.items():
            await self.consumer.seek(TopicPartition(self.topics.requests, number, offset))

    async def _apply_reports(self, *, hold: set[int] | frozenset[int] = frozenset()) -> list[CallAnswered]:
        """Everything background work reported since the last turn. Vendor answers for
        the partitions in ``hold`` are not applied but returned (a resync applies them to
        the state it reads back)."""
        held: list[CallAnswered] = []
        while not self.mailbox.empty():
            report = self.mailbox.get_nowait()
            if isinstance(report, RestoreDone):
                await self.restorer.install(report)
            elif isinstance(report, ControlChanged):
                self.dispatcher.apply_control(report.state)
            elif report.partition in hold:
                held.append(report)
            else:
                part = self.partitions.current(report.partition, report.incarnation)
                if part is not None:
                    self.stepper.answer(part, report)
                elif (rebuilt := self.partitions.rebuilt(report.partition, report.incarnation)) is not None:
                    self.restorer.late_answer(rebuilt, report)
                # else the partition moved to another worker: its new owner redoes the call
        return held

    async def _drain(self, numbers: set[int], deadline: float) -> None:
        """Let these partitions' calls end (until ``deadline``) and apply their answers."""
        await self.dispatcher.wait_in_flight(numbers, deadline)
        await self._apply_reports()

    # ---- committing ----------------------------------------------------------------

    async def _commit_when_due(self) -> None:
        if not self.outbox.pending or self._unfenced():
            return
        if self.outbox.full:
            await self._commit()  # backpressure: let the broker catch up
        elif not self.writer.writing and (
            self.outbox.waited() >= self.settings.commit_interval_ms / 1000
            or self.outbox.calls  # vendor calls waiting for their intent to be durable do not wait for the interval
        ):
            batch = await self.writer.cut()
            if batch is not None:
                self.writer.start(batch, on_done=self.mailbox.wake)

    def _unfenced(self) -> bool:
        """No input offset of any owned partition is known yet, so a transaction now would
        carry none, and the group coordinator could not refuse it if this worker had lost
        its partitions. Wait for the offsets (``Restorer.learn_missing_offsets``), but
        not for ever: a worker that cannot learn them still makes progress, and says so."""
        if self.partitions.positions() or not self.partitions.ready_partitions():
            return False
        if self.outbox.waited() < UNFENCED_WAIT_S:
            return True
        log.warning("committing without input offsets: this transaction is not fenced by the group generation")
        return False

    async def _commit(self, group_metadata: Any = None) -> None:
        """Commit everything pending now, after any commit already in flight."""
        await self._settle(await self.writer.finish())
        batch = await self.writer.cut(group_metadata)
        if batch is not None:
            await self._settle(await self.writer.settle(batch, await self.writer.write(batch)))

    async def _settle(self, settled: Settled | None) -> None:
        if settled is None:
            return
        self.dispatcher.abandon_all(settled.give_up)
        if settled.outcome is Outcome.COMMITTED:
            assert settled.batch is not None
            failed = self.store_writer.committed(settled.batch)
            self._start_calls(settled.start)
            if failed and not self._stopping:
                await self._rebuild(failed)
        elif settled.outcome is Outcome.FENCED and not await self._replace_fenced_producer(settled):
            # Raised again at the next turn if a rebalance callback catches it here.
            self._fenced = settled.error or "fenced"
            raise WorkerFenced(self._fenced)
        elif self._stopping:
            # No resync while leaving (its restore would outlive the consumer), and nothing
            # more may be committed over what was lost: let go of it all.
            log.warning("a transaction failed while stopping: the next owner resumes from Kafka")
            self._forget_uncommitted(set(self.partitions))
            self._drop(set(self.partitions))
        else:
            # In-memory state ran ahead of what is durable: rebuild it from Kafka. A record
            # the broker refused is dealt with on its own afterwards (see RefusedRecords).
            self.refused.remember(
                settled.refused, self.topics.dlq, f"the broker refused a record of this request: {settled.error}"
            )
            # Partitions being handed over are not read back: they are dropped next, and
            # their next owner resumes from Kafka.
            revoking = {n for n in self.partitions if self.partitions[n].revoking}
            self._forget_uncommitted(revoking)
            await self._resync(set(self.partitions) - revoking, settled.replay)

    async def _replace_fenced_producer(self, settled: Settled) -> bool:
        """Kafka fences the producer when another process takes its transactional id, and
        also when the coordinator aborts a transaction that outlived transaction.timeout.ms
        (a broker down that long while one was open). Only the second leaves nothing wrong
        with this process, and only a transaction open that long can have met it. Then a
        new producer takes the id over and, as after any failed transaction, the owned
        partitions are read back from Kafka (the group generation still fences what it
        commits). At most once per PRODUCER_FENCES_WINDOW_S. Returns whether the producer
        was replaced; if not, the process stops."""
        if self._stopping or not self.writer.usable:
            return False
        timeout_s = self.settings.transaction_timeout_ms / 1000
        if settled.open_s < timeout_s:
            log.error(
                "fenced by another process with this transactional id: stopping",
                transaction_open_s=round(settled.open_s, 3),
                transaction_timeout_s=timeout_s,
                instance_id=self.settings.instance_id,
            )
            return False
        now = time.monotonic()
        if self._producer_replaced_at is not None and now - self._producer_replaced_at < PRODUCER_FENCES_WINDOW_S:
            log.error("fenced again soon after the producer was replaced: stopping")
            return False
        self._producer_replaced_at = now
        log.warning(
            "replacing the fenced producer (its transaction outlived the transaction timeout); "
            "the owned partitions are read back from Kafka",
            transaction_open_s=round(settled.open_s, 3),
            error=settled.error,
        )
        try:
            self.producer = self._new_producer()
            await self.writer.replace(self.producer)
        except Exception as exc:  # ProducerStuck (init hung) leaves the writer stuck: the CLI exits at once
            log.error("the new transactional producer could not start", error=str(exc))
            return False
        self.metrics.producers_replaced.inc()
        return True

    def _start_calls(self, calls: list[Call]) -> None:
        """Start the calls whose intent is now durable; a submit of a partition being
        handed over is withdrawn instead (it would not start any more)."""
        for call in calls:
            part = self.partitions.current(call.partition, call.incarnation)
            if part is not None and part.revoking and call.withdrawable:
                self.dispatcher.abandon(call)
                self.stepper.withdraw(part, call)
            else:
                self.dispatcher.dispatch(call)

    def _withdraw_unsent(self, numbers: set[int]) -> None:
        """Before handing partitions over: their submits that have not started are taken
        back (the new owner submits them, with no reconcile and no duplicate flag)."""
        for call in self.outbox.take_calls(numbers) + self.dispatcher.take_waiting(numbers):
            self.dispatcher.abandon(call)
            part = self.partitions.current(call.partition, call.incarnation)
            if part is not None and call.withdrawable:
                self.stepper.withdraw(part, call)

    async def _resync(self, numbers: set[int], replay: list[CallAnswered] | None = None) -> None:
        """Forget these partitions' in-memory state and read it back from Kafka,
        rewinding the consumer to the committed offsets.

        What Kafka cannot give back is carried over to the state read back: the vendor
        answers since the last commit (``replay``, then the outbox's, then those of calls
        still running now) are applied again, and submits whose durable intent never got
        a call are withdrawn."""
        if not numbers:
            return
        await self.restorer.pause(numbers)
        # Let calls in flight end first: a submit still running while the restored intent
        # is reconciled could create a job the reconcile does not see yet.
        await self.dispatcher.wait_in_flight(numbers, time.monotonic() + self.settings.revoke_drain_s)
        late = await self._apply_reports(hold=numbers)
        committed = await self.restorer.committed_offsets(numbers)
        unsent_held, pending_answers = self.outbox.discard(numbers)
        self.dispatcher.abandon_all(unsent_held)  # their intents were never durable
        unsent = self.dispatcher.take_waiting(numbers)  # durable intents, never started
        self.dispatcher.abandon_all(unsent)
        carried = {n: Carried() for n in numbers}
        for answer in [*(replay or []), *pending_answers, *late]:
            if answer.partition in carried:
                carried[answer.partition].answers.append(answer)
        for call in unsent:
            if call.withdrawable:
                carried[call.partition].unsent.append(call)
        await self.restorer.rewind_and_restore(numbers, committed, carried)

    async def _rebuild(self, numbers: set[int]) -> None:
        """These partitions' stores failed: stop believing them and rebuild them from
        the topic (a cold restore). Twice within STORE_FAILURES_WINDOW_S is fatal."""
        now = time.monotonic()
        if self._store_failed_at is not None and now - self._store_failed_at < STORE_FAILURES_WINDOW_S:
            raise StoreError(f"partition stores failed twice within {STORE_FAILURES_WINDOW_S:.0f} s: giving up")
        self._store_failed_at = now
        for number in numbers:
            if self.stores.get(number) is not None:
                self.stores.distrust(number)
        await self._settle(await self.writer.finish())
        await self._resync({n for n in numbers if n in self.partitions})

    def _forget_uncommitted(self, numbers: set[int]) -> None:
        """Drop these partitions' records not yet cut into a transaction, and the calls
        that were waiting for them to be committed."""
        calls, _answers = self.outbox.discard(numbers)
        self.dispatcher.abandon_all(calls)

    # ---- rebalancing ---------------------------------------------------------------

    def _reshare(self) -> None:
        """Each connection's budget follows the part of export.requests this worker owns."""
        ownership = Ownership(len(self.partitions), self._request_partitions)
        if ownership != self.dispatcher.ownership:
            self.dispatcher.reshare(ownership)
            log.info("vendor budgets reshared", owned=ownership.owned, partitions=ownership.total)

    def _ours(self, partitions: list[TopicPartition]) -> set[int]:
        return {tp.partition for tp in partitions if tp.topic == self.topics.requests}

    async def _on_assign(self, consumer: GroupConsumer, partitions: list[TopicPartition]) -> None:
        await consumer.incremental_assign(partitions)
        self._joined = True
        numbers = self._ours(partitions)
        if not numbers:
            return
        await consumer.pause([TopicPartition(self.topics.requests, n) for n in numbers])
        log.info("partitions assigned", partitions=sorted(numbers))
        self.restorer.begin(numbers)
        self.metrics.assigned.set(len(self.partitions))
        self._reshare()

    async def _on_revoke(self, consumer: GroupConsumer, partitions: list[TopicPartition]) -> None:
        try:
            await self._hand_over(consumer, self._ours(partitions))
        finally:
            await self._unassign(consumer, partitions)

    async def _hand_over(self, consumer: GroupConsumer, numbers: set[int]) -> None:
        """Revoked partitions: their calls drained (within revoke_drain_s), what they
        wrote committed with their offsets, their state dropped."""
        if not numbers:
            return
        self.partitions.start_revoking(numbers)
        metadata = await consumer.consumer_group_metadata()
        if self.writer.usable:
            await self._drain(numbers, time.monotonic() + (0 if self._stopping else self.settings.revoke_drain_s))
            try:
                await self._settle(await self.writer.finish())
                self._withdraw_unsent(numbers)
                await self._commit(metadata)
            except WorkerFenced:
                log.error("fenced while handing partitions over", partitions=sorted(numbers))
        self._drop(numbers)
        log.info("partitions revoked", partitions=sorted(numbers))

    async def _on_lost(self, consumer: GroupConsumer, partitions: list[TopicPartition]) -> None:
        numbers = self._ours(partitions)
        log.warning("partitions lost (session expired): dropping uncommitted work", partitions=sorted(numbers))
        try:
            self._forget_uncommitted(numbers)
            self._drop(numbers)
        finally:
            await self._unassign(consumer, partitions)

    @staticmethod
    async def _unassign(consumer: GroupConsumer, partitions: list[TopicPartition]) -> None:
        """The callback answers the revocation itself. Left unanswered, the binding does
        it after the callback, first asking librdkafka for the rebalance protocol while it
        holds the GIL; inside close() that request can wait forever (librdkafka#4041)."""
        await consumer.incremental_unassign(partitions)

    def _drop(self, numbers: set[int]) -> None:
        for number in numbers:
            part = self.partitions.get(number)
            store = self.stores.get(number)
            if store is not None:
                # Kept on disk: a partition that comes back is read from its checkpoint on.
                with contextlib.suppress(StoreError, OSError):
                    if part is not None and part.ready and store.offset is not None:
                        self.stores.checkpoint(number)
                with contextlib.suppress(StoreError):
                    self.stores.close(number)
        self.partitions.drop(numbers)
        self.restorer.forget(numbers)
        self.watchdog.forget(numbers)
        self.dispatcher.forget(numbers)
        self.metrics.assigned.set(len(self.partitions))
        self._reshare()
