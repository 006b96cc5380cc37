"""The worker's transactional producer: confluent-kafka's ``Producer`` with its blocking
calls on one thread of its own.

Why not ``AIOProducer``: in batch mode it sends every (topic, partition) batch and every
call to a thread pool and back, and each return waits for the event loop's next turn.
Under load a transaction of a few thousand records made about 25 such trips and took
0.2-0.4 s, and the vendor calls waiting for their intents waited as long (issue 15).
Here a record is handed to librdkafka on the loop's thread (``produce`` only enqueues it),
and the calls that block (init, the deliveries, sending the offsets and committing,
abort) run one after another on a dedicated thread: one trip per transaction. It also takes record headers, which
the batch mode refuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

T = TypeVar("T")

# How long a produce waits for room when librdkafka's local queue is full, per try.
QUEUE_FULL_WAIT_S = 0.1
# Between two tries of a transactional call that failed but may be retried.
RETRY_PAUSE_S = 0.1


def retrying(
    call: Callable[[float], None],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> None:
    """Run a transactional call, ``call(timeout_s)``, again while librdkafka says it may
    be retried (e.g. it timed out: the request may still complete), until ``deadline``.
    Giving up on it instead would leave the call pending inside librdkafka, and every
    other transactional call, the abort included, refused as conflicting with it."""
    while True:
        try:
            return call(max(deadline - clock(), 0.001))
        except KafkaException as exc:
            left = deadline - clock()
            if not exc.args[0].retriable() or left <= 0:
                raise
            pause(min(RETRY_PAUSE_S, left))  # on the producer's own thread


class Delivery:
    """How one record's delivery ended: set by librdkafka's delivery report (on the
    producer's thread, inside ``flush``), read by the loop once ``flush`` returned."""

    __slots__ = ("done", "error", "offset")

    def __init__(self) -> None:
        self.error: KafkaError | None = None
        self.offset = -1
        self.done = False

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.offset = message.offset()
        self.error = error
        self.done = True

    def refuse(self, error: KafkaError) -> Delivery:
        self.error, self.done = error, True
        return self


class ThreadedProducer:
    """``TransactionalProducer`` over a sync confluent-kafka ``Producer``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="txn-producer")

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)
        except SystemError as exc:
            # confluent-kafka 2.16: once the producer is fenced, the fatal error is raised
            # from inside flush()/poll() and librdkafka then serves the delivery reports
            # anyway, with that exception still set: Python turns it into a SystemError
            # ("returned a result with an exception set") caused by the KafkaException.
            cause = _kafka_cause(exc)
            if cause is None:
                raise
            raise cause from None

    async def init_transactions(self, timeout: float) -> None:
        await self._blocking(self._producer.init_transactions, timeout)

    async def begin_transaction(self) -> None:
        self._producer.begin_transaction()  # local: no request to the broker

    async def produce(self, topic: str, **kwargs: Any) -> Delivery:
        delivery = Delivery()
        while True:
            try:
                self._producer.produce(topic, on_delivery=delivery, **kwargs)
                return delivery
            except BufferError:  # the local queue is full: let deliveries drain
                await self._blocking(self._producer.poll, QUEUE_FULL_WAIT_S)
            except KafkaException as exc:  # refused before sending (too large, unknown partition)
                return delivery.refuse(exc.args[0])

    async def commit_transaction(
        self, timeout: float, offsets: list[TopicPartition] | None = None, metadata: Any = None
    ) -> None:
        await self._blocking(self._commit, timeout, offsets, metadata)

    def _commit(self, timeout: float, offsets: list[TopicPartition] | None, metadata: Any) -> None:
        # Every delivery report first: once a record is refused, librdkafka fails sending
        # the offsets and the commit at once, before serving any report, and the caller
        # could not tell which record it was.
        producer = self._producer
        producer.flush(timeout)
        start = time.monotonic()
        if offsets:
            retrying(lambda left: producer.send_offsets_to_transaction(offsets, metadata, left), start + timeout)
            start += timeout
        retrying(producer.commit_transaction, start + timeout)

    async def flush(self, timeout: float) -> int:
        """Wait for every delivery report (records still queued after ``timeout``)."""
        return await self._blocking(self._producer.flush, timeout)

    async def abort_transaction(self, timeout: float) -> None:
        await self._blocking(retrying, self._producer.abort_transaction, time.monotonic() + timeout)

    async def close(self) -> None:
        try:
            await self._blocking(self._producer.flush, 0)
        finally:
            self._thread.shutdown(wait=False)


def _kafka_cause(exc: BaseException) -> KafkaException | None:
    """The KafkaException that ``exc`` was raised from, however deep."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KafkaException):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
