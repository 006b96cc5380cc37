"""The seams between the runtime and the outside: its Kafka clients and its clocks.

The worker makes its consumer and transactional producer through the factories here, and
reads time through a ``Clock``. Tests pass their own (a producer that fails a chosen
transaction, a consumer that returns chosen offsets, a clock they move by hand) instead
of subclassing anything: the seam is an argument, as httpx's ``transport=`` is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import TopicPartition
from confluent_kafka.aio import AIOConsumer

from worker.runtime.txn_producer import Delivery, ThreadedProducer


class GroupConsumer(Protocol):
    """The group consumer calls the runtime makes (confluent-kafka's ``AIOConsumer``)."""

    async def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...
    async def consume(self, num_messages: int, timeout: float) -> list[Any]: ...
    async def unsubscribe(self) -> None: ...
    async def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...
    async def incremental_unassign(self, partitions: list[TopicPartition]) -> None: ...
    async def pause(self, partitions: list[TopicPartition]) -> None: ...
    async def resume(self, partitions: list[TopicPartition]) -> None: ...
    async def seek(self, partition: TopicPartition) -> None: ...
    async def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]: ...
    async def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    async def get_watermark_offsets(self, partition: TopicPartition, cached: bool) -> tuple[int, int]: ...
    async def list_topics(self, topic: str, timeout: float) -> Any: ...
    async def consumer_group_metadata(self) -> Any: ...
    async def close(self) -> None: ...


class TransactionalProducer(Protocol):
    """The transactional producer calls the runtime makes (``ThreadedProducer``)."""

    async def init_transactions(self, timeout: float) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def produce(self, topic: str, **kwargs: Any) -> Delivery: ...
    async def flush(self, timeout: float) -> int:
        """Wait for every record's delivery report."""

    async def commit_transaction(
        self, timeout: float, offsets: list[TopicPartition] | None = None, metadata: Any = None
    ) -> None:
        """Wait for every delivery report, send ``offsets`` (with the consumer group
        ``metadata``) into the transaction when given, then commit it; each librdkafka
        call within ``timeout``."""

    async def abort_transaction(self, timeout: float) -> None: ...
    async def close(self) -> None: ...


ConsumerFactory = Callable[[dict[str, Any]], GroupConsumer]
ProducerFactory = Callable[[dict[str, Any]], TransactionalProducer]


def aio_consumer(config: dict[str, Any]) -> GroupConsumer:
    return AIOConsumer(config, max_workers=4)


def threaded_producer(config: dict[str, Any]) -> TransactionalProducer:
    return ThreadedProducer(config)


@dataclass(frozen=True, slots=True)
class Clock:
    """Wall time for the engine (it stamps records and schedules jobs in epoch ms), and
    monotonic time for intervals: commit cadence, rate limits, stall detection."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    def now_ms(self) -> int:
        return int(self.wall() * 1000)
