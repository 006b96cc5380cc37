"""Kafka for one-shot operator commands: quiet clients, a fast answer to "is the cluster
there", offsets by time, reading fixed offset ranges, and re-publishing records.

Client log lines are swallowed (an unreachable broker must read as one line, not a
screen of librdkafka retries); errors reach the caller as BrokerUnavailable or
TopicMissing with a single-line message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.aio import AIOConsumer

from worker.config import Settings
from worker.kafka import BrokerUnavailable, list_offsets, log_starts
from worker.ops.errors import TopicMissing

QUIET = logging.getLogger("export_worker.ops.client")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False

_GIVE_UP_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL})


class ClientErrors:
    """``error_cb``: remembers the last error and whether the cluster looks unreachable."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.give_up = False

    def __call__(self, error: KafkaError) -> None:
        text = error.str()
        # "host:9092/bootstrap: Connect to ipv4#... failed: Connection refused (after 0ms in state CONNECT)"
        text = text.split(" (after ", 1)[0]
        if error.code() != KafkaError._ALL_BROKERS_DOWN or self.last is None:
            self.last = text
        if error.code() in _GIVE_UP_CODES:
            self.give_up = True


def client_config(settings: Settings, errors: ClientErrors | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {**settings.librdkafka(), "logger": QUIET}
    if errors is not None:
        conf["error_cb"] = errors
    return conf


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


class Cluster:
    """An admin connection that has been checked to reach the brokers.

    Args:
        settings: bootstrap servers and client security.
        connect_timeout: how long to try before calling the cluster unreachable.
    """

    def __init__(self, settings: Settings, *, connect_timeout: float = 10.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.errors = ClientErrors()
        self.admin = AdminClient(client_config(settings, self.errors))
        self._partitions: dict[str, int] = {}

    async def connect(self) -> Cluster:
        deadline = time.monotonic() + self.connect_timeout
        started = time.monotonic()
        while True:
            try:
                metadata = await asyncio.to_thread(self.admin.list_topics, timeout=0.5)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if error is not None and error.code() not in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                    raise BrokerUnavailable(f"Kafka at {self.settings.kafka_bootstrap}: {error.str()}") from None
            else:
                self._partitions = {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}
                return self
            self.admin.poll(0)  # serves error_cb
            # Refused connections and unknown hosts are reported within milliseconds;
            # a short grace covers a broker that is just restarting.
            now = time.monotonic()
            if now > deadline or (self.errors.give_up and now - started > 1.0):
                why = self.errors.last or f"no answer within {self.connect_timeout:.0f} s"
                raise BrokerUnavailable(f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {why}")

    async def partitions(self, topic: str) -> int:
        """The topic's partition count; TopicMissing when it does not exist."""
        if topic not in self._partitions:
            try:
                metadata = await asyncio.to_thread(self.admin.list_topics, topic=topic, timeout=10)
            except KafkaException as exc:
                raise BrokerUnavailable(f"describe topic {topic}: {exc.args[0].str()}") from None
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise TopicMissing(f"topic {topic} does not exist on {self.settings.kafka_bootstrap}")
            self._partitions[topic] = len(found.partitions)
        return self._partitions[topic]

    async def ends(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Last stable offsets: the end a read_committed reader reaches now."""
        return await list_offsets(self.admin, topic, list(partitions), IsolationLevel.READ_COMMITTED)

    async def beginnings(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The oldest offsets still in the log."""
        return await log_starts(self.admin, topic, list(partitions))

    async def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The offsets ``group`` committed on these partitions (a negative offset where it
        committed none).

        Asked by a consumer of the group that never joins it (it neither subscribes nor
        is assigned anything), not by the admin client: librdkafka 2.16's admin
        ListConsumerGroupOffsets, answered "not coordinator" (a broker still loading the
        group's offsets, as just after it started), hands the error to a consumer-group
        handle an admin client does not have: a segmentation fault of the whole process.
        ``make demo``'s console met it about one start in ten."""
        request = [TopicPartition(topic, p) for p in partitions]
        found = await self._ask_consumer(
            group, lambda consumer: consumer.committed(request, timeout=10), f"offsets committed by {group}"
        )
        return {tp.partition: tp.offset for tp in found}

    async def offsets_for_times(self, topic: str, partitions: Iterable[int], ms: int) -> dict[int, int | None]:
        """Per partition, the first offset whose record timestamp is at or after ``ms``;
        None when every record is older."""
        request = [TopicPartition(topic, p, ms) for p in partitions]
        group = f"{self.settings.group_id}.ops"
        found = await self._ask_consumer(
            group, lambda consumer: consumer.offsets_for_times(request, timeout=15), f"offsets for time in {topic}"
        )
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    async def _ask_consumer(
        self, group: str, ask: Callable[[Consumer], list[TopicPartition]], what: str
    ) -> list[TopicPartition]:
        """``ask`` a consumer of ``group`` made for it (it joins nothing), off the loop; a
        Kafka error is ``BrokerUnavailable`` naming ``what`` was asked."""
        consumer = Consumer({**client_config(self.settings), "group.id": group, "enable.auto.commit": False})
        try:
            return await asyncio.to_thread(ask, consumer)
        except KafkaException as exc:
            raise BrokerUnavailable(f"{what}: {exc.args[0].str()}") from None
        finally:
            await asyncio.to_thread(consumer.close)

    async def whole(self, topic: str, partitions: Iterable[int] | None = None) -> list[Span]:
        """Spans covering ``partitions`` (default: all) from their beginning to their end now."""
        numbers = list(range(await self.partitions(topic))) if partitions is None else list(partitions)
        starts = await self.beginnings(topic, numbers)
        ends = await self.ends(topic, numbers)
        return [Span(p, starts[p], ends[p]) for p in numbers]


async def connect(settings: Settings, *, timeout: float = 10.0) -> Cluster:
    return await Cluster(settings, connect_timeout=timeout).connect()


class RangeReader:
    """Reads fixed offset spans of one topic with read_committed, in batches.

    Each partition stops at its span's end, so records appended meanwhile (a replay
    writing to the topic it reads) are never read back. Use as an async context manager.
    """

    def __init__(self, settings: Settings, topic: str, spans: Iterable[Span], *, batch: int = 1000) -> None:
        self.settings = settings
        self.topic = topic
        self.batch = batch
        self.live = {s.partition: s for s in spans if s.size > 0}
        self._consumer: AIOConsumer | None = None

    async def __aenter__(self) -> RangeReader:
        if self.live:
            self._consumer = AIOConsumer(
                {**client_config(self.settings), "group.id": f"{self.settings.group_id}.ops",
                 "enable.auto.commit": False, "enable.auto.offset.store": False,
                 "isolation.level": "read_committed", "enable.partition.eof": True,
                 "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100},
                max_workers=1,
            )  # fmt: skip
            await self._consumer.assign([TopicPartition(self.topic, s.partition, s.start) for s in self.live.values()])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None

    @property
    def exhausted(self) -> bool:
        return not self.live

    async def next_batch(self) -> list[Message]:
        """The next records in range (possibly none yet); check ``exhausted`` to stop."""
        if not self.live or self._consumer is None:
            return []
        out: list[Message] = []
        finished: list[int] = []
        for msg in await self._consumer.consume(self.batch, 0.2):
            number = msg.partition()
            span = self.live.get(number)
            if span is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    finished.append(number)
                    continue
                raise BrokerUnavailable(f"reading {self.topic}[{number}]: {error.str()}")
            offset = msg.offset()
            if offset >= span.end:
                finished.append(number)
                continue
            out.append(msg)
            if offset >= span.end - 1:
                finished.append(number)
        done = [n for n in dict.fromkeys(finished) if self.live.pop(n, None) is not None]
        if done:
            await self._consumer.pause([TopicPartition(self.topic, n) for n in done])
        return out


async def read_all(
    settings: Settings, topic: str, spans: Iterable[Span], *, on_batch: Callable[[int], None] | None = None
) -> list[Message]:
    """Every record of ``spans``, in partition order."""
    out: list[Message] = []
    async with RangeReader(settings, topic, spans) as reader:
        while not reader.exhausted:
            batch = await reader.next_batch()
            out.extend(batch)
            if on_batch is not None and batch:
                on_batch(len(batch))
    return out


class Republisher:
    """Writes records with an idempotent producer and reports which were delivered.

    The plain (not asyncio) producer is used because it keeps headers, which the
    asyncio producer refuses.
    """

    def __init__(self, settings: Settings) -> None:
        self.errors = ClientErrors()
        self.producer = Producer(
            {**client_config(settings, self.errors), "enable.idempotence": True, "acks": "all", "linger.ms": 5,
             "delivery.timeout.ms": 60_000, "partitioner": "murmur2_random"}
        )  # fmt: skip
        self.delivered: list[Any] = []
        self.failed: list[tuple[Any, str]] = []

    def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes | None]] | None,
        token: Any,
    ) -> None:
        def done(error: KafkaError | None, _msg: Message) -> None:
            if error is None:
                self.delivered.append(token)
            else:
                self.failed.append((token, error.str()))

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = headers
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=done, **extra)
                break
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: let deliveries drain
        self.producer.poll(0)

    async def flush(self, timeout: float = 90.0) -> None:
        """Wait for every delivery; BrokerUnavailable if any record was not written."""
        remaining = await asyncio.to_thread(self.producer.flush, timeout)
        if self.failed:
            _token, why = self.failed[0]
            raise BrokerUnavailable(f"{len(self.failed)} record(s) were not written: {why}")
        if remaining:
            raise BrokerUnavailable(
                f"{remaining} record(s) not confirmed within {timeout:.0f} s: {self.errors.last or 'no answer'}"
            )
