"""The transactional producer: cutting what the outbox holds into a batch, writing it in
one Kafka transaction with the input offsets, and saying how that ended.

The writer never decides what happens next; it returns a ``Settled`` outcome
(committed, fenced, or the in-memory state must be rebuilt from Kafka) with the vendor
calls that may now start or must be given up, and the worker acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from opentelemetry.trace import Span

from worker.codec import Codec, SchemaInfo
from worker.engine.model import JobState
from worker.errors import DecodeError, ProducerStuck
from worker.observability import Metrics
from worker.records import state_to_record
from worker.runtime.calls import Call
from worker.runtime.clients import GroupConsumer, TransactionalProducer
from worker.runtime.mailbox import CallAnswered
from worker.runtime.outbox import Outbox, Outgoing
from worker.runtime.partitions import Partitions
from worker.runtime.refused import RecordsRefused, refused_record
from worker.runtime.txn_producer import Delivery
from worker.store import StoreError, StoreSet
from worker.store.peek import peek_body
from worker.tracing import TRACEPARENT, Tracing, fail

log = structlog.get_logger("export_worker")


# How long an abort first waits for the failed transaction's delivery reports.
ABORT_FLUSH_S = 5.0
# How long a replaced (fenced) producer may take to close.
CLOSE_S = 5.0


@dataclass(frozen=True, slots=True)
class CallTimeouts:
    """Seconds each transactional call may take (librdkafka's own timeouts), and how far
    past its timeout a call may run before the producer is declared stuck."""

    init_s: float = 30
    commit_s: float = 20  # each of: the records' delivery, sending the input offsets, committing
    abort_s: float = 30
    stuck_margin_s: float = 15


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    outgoing: list[Outgoing]
    calls: list[Call]  # to start once it is committed
    answers: list[CallAnswered]  # the vendor answers its records came from
    offsets: list[TopicPartition]
    metadata: Any  # consumer group metadata, taken with the offsets
    incarnations: dict[int, int]  # the partitions it was cut from
    # Once written: per partition, the offset after its last export.jobs record (where a
    # store holding this batch stands).
    jobs_offsets: dict[int, int] = field(default_factory=dict)
    began: float = 0.0  # when its transaction began (monotonic)


class Outcome(Enum):
    COMMITTED = "committed"  # durable: start the calls that waited for it
    FENCED = "fenced"  # the producer can write no more: replace it (``Worker``) or stop
    RESYNC = "resync"  # aborted: in-memory state ran ahead of Kafka; rebuild it


@dataclass(slots=True)
class Settled:
    outcome: Outcome
    start: list[Call]  # calls that may start now (committed only)
    give_up: list[Call]  # calls that will never start
    error: str | None = None
    replay: list[CallAnswered] = field(default_factory=list)  # resync: answers to apply again
    refused: list[Outgoing] = field(default_factory=list)  # resync: records the broker refused
    batch: Batch | None = None  # committed: what it wrote (for the partition stores)
    open_s: float = 0.0  # fenced: how long its transaction had been open by then


# A record whose delivery was never reported, though its transaction committed.
_UNDELIVERED = KafkaError(KafkaError._MSG_TIMED_OUT, "no delivery report for a record of a committed transaction")


def _publish_attributes(out: Outgoing) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.kafka.message.key": out.key.decode("utf-8", "replace"),
    }


def _end_publish_spans(
    spans: Iterable[tuple[Span | None, bytes, list[str]]], error: BaseException | None, records: int
) -> None:
    """A publish span lasts until its transaction ends: committed, or not (then the
    events were never visible; they are published again after the resync)."""
    for span, _, what in spans:
        if span is None:
            continue
        # e.g. ["SUCCEEDED", "FileReady"]
        span.set_attributes({"export.published": what, "messaging.batch.message_count": records})
        if error is not None:
            fail(span, f"transaction not committed: {type(error).__name__}")
        span.end()


def _refused(delivery: Delivery) -> bool:
    return delivery.error is not None and refused_record(delivery.error)


_GENERATION_CODES = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.FENCED_INSTANCE_ID}
)


def generation_moved(error: KafkaException) -> bool:
    """send_offsets_to_transaction refused because the group rebalanced meanwhile."""
    code = error.args[0].code() if error.args else None
    return code in _GENERATION_CODES and not error.args[0].fatal()


def fenced(error: KafkaError) -> bool:
    # _FATAL: what produce() says once the producer is fenced (not flagged fatal there).
    return error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError._FATAL)


class TransactionWriter:
    """Args:
    outbox: where the records waiting for a transaction are taken from.
    partitions: the owned partitions (input offsets, incarnations).
    codec: encodes job states when a batch is cut.
    jobs_topic: the state topic.
    metrics: transaction counters and timings.
    stores: the partition stores, where the full body of a trimmed job is read back.
    tracing: publish spans and ``traceparent`` headers for status and file events (on).
    state_writer: the JobState schema version to write (an earlier one while the fleet
        may run workers that cannot read the current one); the current one if None.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        partitions: Partitions,
        codec: Codec,
        jobs_topic: str,
        metrics: Metrics,
        stores: StoreSet | None = None,
        tracing: Tracing | None = None,
        state_writer: SchemaInfo | None = None,
    ) -> None:
        self._outbox = outbox
        self._tracing = tracing or Tracing()
        self._state_writer = state_writer
        self._stores = stores
        self._partitions = partitions
        self._codec = codec
        self._jobs_topic = jobs_topic
        self._metrics = metrics
        self.producer: TransactionalProducer | None = None
        self._consumer: GroupConsumer | None = None
        self.stuck = False  # see ProducerStuck
        self.halted = False  # the loop died mid-turn: commit nothing more, the next owner redoes it
        self.timeouts = CallTimeouts()
        self._in_flight: tuple[asyncio.Task[KafkaException | None], Batch] | None = None

    async def open(self, producer: TransactionalProducer, consumer: GroupConsumer) -> None:
        self.producer = producer
        self._consumer = consumer
        await producer.init_transactions(self.timeouts.init_s)

    async def replace(self, producer: TransactionalProducer) -> None:
        """Write with ``producer`` from now on, in place of a fenced one (closed first).
        Its ``init_transactions`` takes the transactional id over: the coordinator ends
        whatever transaction the old one left open before it answers."""
        old, self.producer = self.producer, producer
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), CLOSE_S)
        await self._bounded(producer.init_transactions(self.timeouts.init_s), self.timeouts.init_s)

    @property
    def usable(self) -> bool:
        return self.producer is not None and not self.halted and not self.stuck

    @property
    def writing(self) -> bool:
        """A batch is being written in the background."""
        return self._in_flight is not None

    @property
    def written(self) -> bool:
        """The batch written in the background has finished (settle it next)."""
        return self._in_flight is not None and self._in_flight[0].done()

    # ---- cutting ---------------------------------------------------------------------

    async def cut(self, group_metadata: Any = None) -> Batch | None:
        """Take what the outbox holds, the calls waiting on it and the input positions
        (everything consumed so far has been turned into those records)."""
        outbox = self._outbox
        if not outbox.pending:
            outbox.since = 0.0
            return None
        taken = outbox.take(self._encode_state, self._jobs_topic)
        offsets = self._partitions.positions()
        metadata = (group_metadata or await self._group_metadata()) if offsets else None
        return Batch(taken.records, taken.calls, taken.answers, offsets, metadata, self._partitions.incarnations())

    def _encode_state(self, number: int, state: JobState) -> bytes:
        if state.body_in_store:
            state = state.evolve(job_json=self._stored_body(number, state), body_in_store=False)
        return self._codec.encode("JobState", state_to_record(state), topic=self._jobs_topic, writer=self._state_writer)

    def _stored_body(self, number: int, state: JobState) -> str:
        """The full job body of a job memory keeps trimmed: every record carries it."""
        store = self._stores.get(number) if self._stores is not None else None
        try:
            value = store.get(state.request_id) if store is not None else None
            if value is not None:
                return peek_body(value, self._codec)
        except (StoreError, DecodeError) as exc:
            log.error("stored job body unreadable", request_id=state.request_id, error=str(exc))
        else:
            log.error("stored job body missing", request_id=state.request_id, partition=number)
        # Never expected: the trimmed view still lets the job be polled to its end; the
        # record's body is what is left of it.
        self._metrics.store_failures.inc()
        return state.job_json

    async def _group_metadata(self) -> Any:
        assert self._consumer is not None
        return await self._consumer.consumer_group_metadata()

    # ---- writing ---------------------------------------------------------------------

    def start(self, batch: Batch, on_done: Callable[[], object] | None = None) -> None:
        """Write ``batch`` in the background while the loop keeps working; the next batch
        waits for this one (transactions are strictly one after another). ``on_done`` is
        called when the write has ended (to wake the loop)."""
        task = asyncio.create_task(self.write(batch))
        if on_done is not None:
            task.add_done_callback(lambda _: on_done())
        self._in_flight = (task, batch)

    async def finish(self) -> Settled | None:
        """Wait for the background batch, if any, and settle it."""
        if self._in_flight is None:
            return None
        task, batch = self._in_flight
        self._in_flight = None
        return await self.settle(batch, await task)

    async def wait_abandoned(self, timeout_s: float) -> None:
        """At a crash: do not leave the background transaction open, but settle nothing."""
        if self._in_flight is None:
            return
        task = self._in_flight[0]
        await asyncio.wait([task], timeout=timeout_s)
        if not task.done():
            self.stuck = True  # closing it would wait for its thread forever
        elif not task.cancelled():
            task.exception()  # already reported by the loop's failure

    async def write(self, batch: Batch) -> KafkaException | None:
        """Write one batch in one Kafka transaction; never touches the consumer (a
        rebalance callback may be waiting for it while the consumer is busy).

        1. begin: nothing visible yet; a crash here loses nothing (inputs are re-read).
        2. produce every record (export.jobs to the request's own partition).
        3. in one call: send the consumer's positions with the group metadata (the
           coordinator refuses them if this worker no longer owns its partitions: zombie
           fencing), then commit: every record delivered, all of it visible to
           read_committed readers at once.
        Then (``settle``) the vendor calls waiting for their intent to be durable start.
        """
        assert self.producer is not None
        producer = self.producer
        started = batch.began = time.monotonic()
        # Tracing on: one publish span per job and transaction, for its status and file events.
        published: dict[bytes, tuple[Span | None, bytes, list[str]]] = {}
        ended: BaseException | None = None
        try:
            await producer.begin_transaction()
            deliveries = []
            for out in batch.outgoing:
                extra: dict[str, Any] = {}
                if out.target_partition is not None:
                    extra["partition"] = out.target_partition
                if out.headers:
                    extra["headers"] = out.headers
                if out.trace is not None and self._tracing.enabled:
                    if out.key not in published:
                        if self._tracing.records(out.trace):
                            span, traceparent = self._tracing.publish(out.trace, _publish_attributes(out))
                        else:  # a trace the sampler drops: its events carry the job's context
                            span, traceparent = None, out.trace.traceparent.encode()
                        published[out.key] = (span, traceparent, [])
                    _, traceparent, what = published[out.key]
                    what.append(out.what)
                    extra["headers"] = [(TRACEPARENT, traceparent)]
                deliveries.append(await producer.produce(out.topic, value=out.value, key=out.key, **extra))
            # A record refused before it was sent (e.g. larger than the producer takes)
            # is not part of the transaction, so committing would leave it out silently.
            if any(d.error is not None for d in deliveries):
                # Which records were refused: the reports of those already sent too.
                await self._bounded(producer.flush(self.timeouts.commit_s), self.timeouts.commit_s)
                self._raise_refused(batch.outgoing, deliveries)
            # One trip: the input positions (refused by the group coordinator if this
            # worker no longer owns the partitions), the records' delivery, the commit.
            # librdkafka fails the commit if any record's delivery failed.
            calls = 3 if batch.offsets else 2  # deliveries, offsets, commit
            try:
                await self._bounded(
                    producer.commit_transaction(self.timeouts.commit_s, batch.offsets or None, batch.metadata),
                    calls * self.timeouts.commit_s,
                )
            except KafkaException as exc:
                refused = [out for out, d in zip(batch.outgoing, deliveries, strict=True) if _refused(d)]
                if refused:
                    raise RecordsRefused(exc.args[0], refused) from None
                raise
            self._raise_refused(batch.outgoing, deliveries, every=True)
            batch.jobs_offsets = self._jobs_offsets(batch.outgoing, deliveries)
        except KafkaException as exc:
            ended = exc
            return exc
        except BaseException as exc:
            ended = exc
            raise
        finally:
            _end_publish_spans(published.values(), ended, len(batch.outgoing))
        self._metrics.transactions.labels("committed").inc()
        self._metrics.commit_seconds.observe(time.monotonic() - started)
        self._metrics.commit_records.observe(len(batch.outgoing))
        return None

    @staticmethod
    def _raise_refused(outgoing: list[Outgoing], deliveries: list[Delivery], *, every: bool = False) -> None:
        """Raise if a record's delivery failed (``every``: or has not been reported),
        naming the records refused for themselves (``RecordsRefused``)."""
        failed = [
            (out, d.error or _UNDELIVERED)
            for out, d in zip(outgoing, deliveries, strict=True)
            if d.error is not None or (every and not d.done)
        ]
        if failed:
            refused = [out for out, error in failed if refused_record(error)]
            error = failed[0][1]
            raise RecordsRefused(error, refused) if refused else KafkaException(error)

    def _jobs_offsets(self, outgoing: list[Outgoing], delivered: list[Delivery]) -> dict[int, int]:
        ends: dict[int, int] = {}
        for out, delivery in zip(outgoing, delivered, strict=True):
            if out.topic == self._jobs_topic and out.target_partition is not None:
                ends[out.target_partition] = max(ends.get(out.target_partition, 0), delivery.offset + 1)
        return ends

    async def _bounded(self, call: Any, timeout_s: float) -> None:
        """Await a transactional call, enforcing its timeout from this side too."""
        limit = timeout_s + self.timeouts.stuck_margin_s
        try:
            await asyncio.wait_for(call, limit)
        except TimeoutError:
            self.stuck = True
            raise ProducerStuck(f"a transactional call did not return within {limit:.0f} s") from None

    # ---- settling --------------------------------------------------------------------

    async def settle(self, batch: Batch, error: KafkaException | None) -> Settled:
        """How the batch ended, after writing it once more if only a rebalance refused it."""
        give_up: list[Call] = []
        if error is not None and generation_moved(error) and not self.halted:
            # A rebalance bumped the group generation while this batch was in flight: its
            # records are still right for the partitions still owned; write them again.
            log.info("transaction refused after a rebalance; writing it again", error=error.args[0].str())
            self._metrics.transactions.labels("retried").inc()
            if await self._abort():
                batch, give_up = self._still_owned(batch)
                if batch.offsets:
                    batch.metadata = await self._group_metadata()
                error = await self.write(batch)
        if error is None:
            return Settled(Outcome.COMMITTED, batch.calls, give_up, batch=batch)
        give_up.extend(batch.calls)
        kafka_error: KafkaError = error.args[0]
        self._metrics.transactions.labels("aborted").inc()
        if fenced(kafka_error):
            log.error("transactional producer fenced", error=kafka_error.str())
            return self._fenced(batch, give_up, kafka_error.str())
        log.warning("transaction failed; aborting and restoring owned partitions", error=kafka_error.str())
        if not await self._abort():
            return self._fenced(batch, give_up, f"the failed transaction could not be aborted: {kafka_error.str()}")
        refused = error.records if isinstance(error, RecordsRefused) else []
        return Settled(Outcome.RESYNC, [], give_up, kafka_error.str(), replay=batch.answers, refused=refused)

    @staticmethod
    def _fenced(batch: Batch, give_up: list[Call], why: str) -> Settled:
        open_s = time.monotonic() - batch.began if batch.began else 0.0
        return Settled(Outcome.FENCED, [], give_up, why, replay=batch.answers, open_s=open_s)

    async def _abort(self) -> bool:
        """Abort the open transaction. If that fails with a fatal error (fenced, or the
        transaction state librdkafka#4849 leaves), nothing more can be written with this
        producer, but a new one can take over (``Worker``). Any other failure leaves its
        transaction state unknown, and a call may still hang in it: it is declared stuck
        (the process exits, its partitions move on, a new producer starts clean)."""
        assert self.producer is not None
        try:
            # librdkafka#4849: an abort that reaches the coordinator before it has added the
            # transaction's partitions (AddPartitionsToTxn still in flight) is refused for
            # good (INVALID_TXN_STATE). A delivery report proves they were added, so the
            # reports come first; whatever they say, the abort follows.
            with contextlib.suppress(KafkaException):
                await self._bounded(self.producer.flush(ABORT_FLUSH_S), ABORT_FLUSH_S)
            await self._bounded(self.producer.abort_transaction(self.timeouts.abort_s), self.timeouts.abort_s)
        except ProducerStuck:
            return False
        except KafkaException as exc:
            if fenced(exc.args[0]):
                # E.g. the coordinator aborted it already (it outlived the transaction
                # timeout) and fenced the producer: the call returned, nothing hangs.
                log.error("transaction could not be aborted: the producer has a fatal error", error=exc.args[0].str())
                return False
            log.error("transaction could not be aborted: the producer is unusable", error=exc.args[0].str())
            self.stuck = True
            return False
        return True

    def _still_owned(self, batch: Batch) -> tuple[Batch, list[Call]]:
        """The part of ``batch`` whose partitions are still owned in the same incarnation,
        and the calls of the rest (which will never start)."""

        def owned(number: int) -> bool:
            return self._partitions.current(number, batch.incarnations.get(number)) is not None

        kept = Batch(
            [o for o in batch.outgoing if owned(o.partition)],
            [c for c in batch.calls if owned(c.partition)],
            [a for a in batch.answers if owned(a.partition)],
            [tp for tp in batch.offsets if owned(tp.partition)],
            batch.metadata,
            batch.incarnations,
        )
        return kept, [c for c in batch.calls if not owned(c.partition)]
