"""Small fakes at the runtime's own seams (clock, consumer, producer, vendor adapter) for
broker-free unit tests of its collaborators. What only Kafka can show (rebalances,
transactions, restore) is tested against the real broker in tests/integration."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from tests.conftest import itron_connection
from worker.codec import Codec
from worker.config import TopicSettings
from worker.engine.machine import Context, step
from worker.engine.model import (
    CallKind,
    Event,
    JobState,
    PollAnswered,
    ReconcileAnswered,
    RequestInfo,
    RequestReceived,
    Status,
    SubmitAnswered,
)
from worker.engine.policy import Policy
from worker.observability import Metrics
from worker.runtime.calls import Call
from worker.runtime.clients import Clock
from worker.runtime.connections import Connection
from worker.runtime.dispatcher import CallDispatcher
from worker.runtime.mailbox import Mailbox
from worker.runtime.outbox import Outbox
from worker.runtime.partitions import Partitions
from worker.runtime.refused import RefusedRecords
from worker.runtime.stepper import Stepper
from worker.runtime.txn_producer import Delivery
from worker.store import StoreSet
from worker.vendors.base import JobSpec

if TYPE_CHECKING:
    from worker.runtime import Worker

NOW_S = 1_700_000_000.0
POLICY = Policy(jitter=0.0)


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self, wall_s: float = NOW_S, mono_s: float = 1_000.0) -> None:
        self.wall_s = wall_s
        self.mono_s = mono_s
        self.clock = Clock(wall=lambda: self.wall_s, monotonic=lambda: self.mono_s)

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def now_ms(self) -> int:
        return self.clock.now_ms()


class FakeAdapter:
    """A vendor adapter whose answers the test chooses: an event, or an exception to raise.
    With ``gate`` set, every call waits for it (a slow vendor)."""

    vendor: ClassVar[str] = "itron"
    can_reconcile: ClassVar[bool] = False

    def __init__(self) -> None:
        self.answers: dict[CallKind, Event | Exception] = {
            CallKind.SUBMIT: SubmitAnswered("job-1", "Queued", Status.QUEUED),
            CallKind.POLL: PollAnswered("Processing", Status.RUNNING),
            CallKind.RECONCILE: ReconcileAnswered(known=False),
        }
        self.calls: list[tuple[CallKind, str]] = []
        self.gate: asyncio.Event | None = None

    async def _answer(self, kind: CallKind, spec: JobSpec) -> Any:
        self.calls.append((kind, spec.request_id))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers[kind]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def submit(self, spec: JobSpec) -> Any:
        return await self._answer(CallKind.SUBMIT, spec)

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        return {name: job[name] for name in ("filetype",) if name in job}

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> Any:
        return await self._answer(CallKind.POLL, spec)

    async def reconcile(self, spec: JobSpec) -> Any:
        return await self._answer(CallKind.RECONCILE, spec)


def connection(
    name: str = "itron", *, adapter: FakeAdapter | None = None, max_concurrency: int = 2, rate_per_s: float = 100
) -> Connection:
    config = itron_connection("http://127.0.0.1:9", max_concurrency=max_concurrency, rate_per_s=rate_per_s)
    return Connection(name, config, adapter or FakeAdapter(), POLICY)  # type: ignore[arg-type]


def accepted(request_id: str, now_ms: int, *, partition: int = 0, offset: int = 0, conn: str = "itron") -> JobState:
    """A freshly accepted job, as the engine makes it."""
    request = RequestInfo(
        request_id=request_id,
        tenant="acme",
        connection=conn,
        vendor="itron",
        job_json="{}",
        requested_at_ms=now_ms,
        partition=partition,
        offset=offset,
    )
    state = step(None, RequestReceived(request), Context(now_ms, 0.5, POLICY)).state
    assert state is not None
    return state


def call_for(state: JobState, conn: Connection, kind: CallKind, *, partition: int = 0, incarnation: int = 1) -> Call:
    return Call(partition, incarnation, state.request_id, kind, conn, state, has_slot=False)


def metrics() -> Metrics:
    return Metrics()


class Collaborators:
    """The loop-side collaborators wired as ``Worker`` wires them, over a fake clock and
    one connection (a fake adapter unless given)."""

    def __init__(self, conn: Connection | None = None, *, stores: StoreSet | None = None) -> None:
        self.time = FakeClock()
        self.conn = conn or connection()
        self.connections = {self.conn.name: self.conn}
        self.partitions = Partitions("requests")
        self.mailbox = Mailbox()
        self.metrics = metrics()
        self.dispatcher = CallDispatcher(self.connections, self.partitions, self.mailbox, self.time.clock, self.metrics)
        self.dispatcher.open(self.connections)
        self.outbox = Outbox(self.time.clock.monotonic)
        self.refused = RefusedRecords()
        self.stepper = Stepper(
            connections=self.connections,
            outbox=self.outbox,
            dispatcher=self.dispatcher,
            codec=Codec(),
            topics=TopicSettings(),
            clock=self.time.clock,
            rng=random.Random(1),
            metrics=metrics(),
            refused=self.refused,
            stores=stores,
        )


@dataclass(frozen=True)
class Committed:
    """A committed-offset answer (confluent-kafka's TopicPartition, whose ``error`` is read-only)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class FakeConsumer:
    """The group consumer calls the runtime makes, answered from fields the test sets."""

    def __init__(self) -> None:
        self.committed_offsets: dict[int, int] = {}
        self.committed_errors: dict[int, KafkaError] = {}
        self.committed_raises: KafkaException | None = None
        self.committed_asked = 0
        self.low_watermarks: dict[int, int] = {}  # where the consumer starts with nothing committed
        self.paused: list[int] = []
        self.resumed: list[int] = []
        self.paused_now: set[int] = set()  # paused by the last pause/resume that named them
        self.seeks: list[tuple[int, int]] = []
        self.assigned: list[int] = []
        self.metadata_asked = 0
        self.list_topics_raises: KafkaException | None = None
        self.metadata_requests: list[str] = []  # topics whose metadata was asked for

    async def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        self.committed_asked += 1
        if self.committed_raises is not None:
            raise self.committed_raises
        return [
            Committed(
                tp.topic,
                tp.partition,
                self.committed_offsets.get(tp.partition, OFFSET_INVALID),
                self.committed_errors.get(tp.partition),
            )
            for tp in partitions
        ]

    async def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = 1.0, cached: bool = False
    ) -> tuple[int, int]:
        low = self.low_watermarks.get(partition.partition, 0)
        return low, low + 100

    async def list_topics(self, topic: str, timeout: float) -> Any:
        self.metadata_requests.append(topic)
        if self.list_topics_raises is not None:
            raise self.list_topics_raises
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={})})

    async def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.low_watermarks.get(tp.partition, 0)) for tp in partitions]

    async def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.extend(tp.partition for tp in partitions)
        self.paused_now.update(tp.partition for tp in partitions)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.extend(tp.partition for tp in partitions)
        self.paused_now.difference_update(tp.partition for tp in partitions)

    async def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.extend(tp.partition for tp in partitions)

    async def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.partition, partition.offset))

    async def consumer_group_metadata(self) -> Any:
        self.metadata_asked += 1
        return f"metadata-{self.metadata_asked}"


@dataclass
class Transaction:
    records: list[tuple[str, bytes | None, int | None]] = field(default_factory=list)  # (topic, key, partition)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    metadata: Any = None
    committed: bool = False
    aborted: bool = False


class FakeProducer:
    """A transactional producer that records each transaction. As librdkafka's (whose
    commit serves every delivery report first), a record the broker refuses fails its
    delivery, then sending the offsets and the commit. Faults: ``refuse`` makes the
    broker refuse matching records, ``offsets_error`` / ``commit_error`` fail sending the
    offsets / committing once, ``early_commit_error`` fails the next commit before any
    delivery report is served, ``abort_error`` fails every abort, ``hang_commit`` makes the
    next commit never return. As the broker does (librdkafka#4849), an abort is refused
    for good while a record of the transaction has no delivery report yet."""

    def __init__(self) -> None:
        self.transactions: list[Transaction] = []
        self.refuse: Callable[[str], bool] = lambda topic: False
        self.offsets_error: KafkaException | None = None
        self.commit_error: KafkaException | None = None
        self.abort_error: KafkaException | None = None
        self.early_commit_error: KafkaException | None = None
        self.hang_commit = False
        self.ends: dict[tuple[str, int | None], int] = {}  # next offset by (topic, partition)
        self._pending: list[tuple[str, int | None, Delivery]] = []

    @property
    def current(self) -> Transaction:
        return self.transactions[-1]

    async def init_transactions(self, timeout: float) -> None:
        return None

    async def begin_transaction(self) -> None:
        self.transactions.append(Transaction())
        self._pending = []

    async def produce(self, topic: str, **kwargs: Any) -> Delivery:
        self.current.records.append((topic, kwargs.get("key"), kwargs.get("partition")))
        delivery = Delivery()
        self._pending.append((topic, kwargs.get("partition"), delivery))
        return delivery

    async def flush(self, timeout: float) -> int:
        self._deliver()
        return 0

    def _deliver(self) -> None:
        refused = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")
        for topic, partition, delivery in self._pending:
            if delivery.done:
                continue
            if self.refuse(topic):
                delivery.refuse(refused)
            else:
                at = self.ends.get((topic, partition), 0)
                self.ends[(topic, partition)] = at + 1
                delivery.offset, delivery.done = at, True

    async def commit_transaction(
        self, timeout: float, offsets: list[TopicPartition] | None = None, metadata: Any = None
    ) -> None:
        if self.hang_commit:
            await asyncio.Event().wait()
        if self.early_commit_error is not None:
            error, self.early_commit_error = self.early_commit_error, None
            raise error
        self._deliver()
        if any(delivery.error for _, _, delivery in self._pending):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "a record failed", txn_requires_abort=True))
        if offsets:
            if self.offsets_error is not None:
                error, self.offsets_error = self.offsets_error, None
                raise error
            self.current.offsets = [(tp.partition, tp.offset) for tp in offsets]
            self.current.metadata = metadata
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            raise error
        self.current.committed = True

    async def abort_transaction(self, timeout: float) -> None:
        if self.abort_error is not None:
            raise self.abort_error
        if any(not delivery.done and delivery.error is None for _, _, delivery in self._pending):
            raise KafkaException(
                KafkaError(KafkaError.INVALID_TXN_STATE, "partitions not added yet (librdkafka#4849)", fatal=True)
            )
        self.current.aborted = True

    async def close(self) -> None:
        return None


@dataclass
class FakeMessage:
    """A consumed record, as confluent-kafka hands it over (no error)."""

    value_: bytes | None
    key_: bytes | None
    partition_: int = 0
    offset_: int = 0
    topic_: str = "requests"
    headers_: list[tuple[str, bytes | None]] | None = None

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def topic(self) -> str:
        return self.topic_

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, NOW_MS_INT)


NOW_MS_INT = int(NOW_S * 1000)


def own_restored(worker: Worker, consumer: FakeConsumer, numbers: tuple[int, ...] = (0, 1)) -> Partitions:
    """A never-started Worker over ``consumer``, owning these request partitions, restored
    and read from offset 0 (the test drives its turns)."""
    worker.consumer = consumer
    worker.restorer.open(consumer)
    worker.partitions.claim(set(numbers))
    for number in numbers:
        worker.partitions[number].ready = True
        worker.partitions[number].next_offset = 0
    return worker.partitions
