"""The worker's transactional producer against Apache Kafka: each record's delivery is
known once the commit returns (offsets, or why it was refused), whether the record was
refused before it left or by the broker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker.runtime.txn_producer import ThreadedProducer


async def make_topic(bootstrap: str, **config: str) -> str:
    name = f"txn-producer-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 2, 1, config=config)]).values():
        future.result(30)
    return name


def producer(bootstrap: str, transactional_id: str = "", **config: object) -> ThreadedProducer:
    return ThreadedProducer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id or f"txn-test-{uuid.uuid4().hex}",
            **config,
        }
    )


def committed_values(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    """What a read_committed reader sees: ``expected`` values, or (when they do not come)
    what came within a few seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"txn-read-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
        values: list[bytes] = []
        deadline = time.monotonic() + (30 if expected else 3)
        while time.monotonic() < deadline and (not expected or len(values) < expected):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value())
        return values
    finally:
        consumer.close()


class TestThreadedProducer:
    async def test_a_commit_reports_every_records_offset(self, kafka_bootstrap: str) -> None:
        topic = await make_topic(kafka_bootstrap)
        txn = producer(kafka_bootstrap)
        try:
            await txn.init_transactions(30)
            for round_ in range(2):
                await txn.begin_transaction()
                deliveries = [
                    await txn.produce(topic, value=f"{round_}-{i}".encode(), partition=i % 2) for i in range(6)
                ]
                await txn.commit_transaction(30)
                assert all(d.done and d.error is None for d in deliveries)
                # Three records per partition, then a commit marker: offsets 0-2, 4-6.
                first = 4 * round_
                assert sorted(d.offset for d in deliveries) == sorted([first, first + 1, first + 2] * 2)
        finally:
            await txn.close()
        assert len(committed_values(kafka_bootstrap, topic, 12)) == 12

    async def test_a_record_larger_than_the_producer_takes_is_refused_before_it_leaves(
        self, kafka_bootstrap: str
    ) -> None:
        topic = await make_topic(kafka_bootstrap)
        txn = producer(kafka_bootstrap, **{"message.max.bytes": 10_000})
        try:
            await txn.init_transactions(30)
            await txn.begin_transaction()
            kept = await txn.produce(topic, value=b"small", partition=0)
            refused = await txn.produce(topic, value=b"x" * 20_000, partition=0)
            assert refused.done and refused.error is not None
            assert refused.error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            await txn.abort_transaction(30)
            assert not kept.done or kept.error is not None  # aborted: never delivered as committed
        finally:
            await txn.close()
        assert committed_values(kafka_bootstrap, topic, 0) == []

    async def test_a_record_the_broker_refuses_fails_the_commit_and_says_so(self, kafka_bootstrap: str) -> None:
        topic = await make_topic(kafka_bootstrap, **{"max.message.bytes": "2000"})
        txn = producer(kafka_bootstrap)
        try:
            await txn.init_transactions(30)
            await txn.begin_transaction()
            kept = await txn.produce(topic, value=b"small", partition=1)
            refused = await txn.produce(topic, value=b"x" * 5_000, partition=0)
            with pytest.raises(KafkaException) as failed:
                await txn.commit_transaction(30)
            assert failed.value.args[0].txn_requires_abort()
            assert refused.error is not None and refused.error.code() == KafkaError.MSG_SIZE_TOO_LARGE
            assert kept.done
            await txn.abort_transaction(30)
        finally:
            await txn.close()
        assert committed_values(kafka_bootstrap, topic, 0) == []

    async def test_a_fenced_producer_says_so_with_a_fatal_kafka_error(self, kafka_bootstrap: str) -> None:
        """confluent-kafka raises the fenced error from inside flush() and then serves the
        delivery reports with it still set: a SystemError, unless the producer unwraps it."""
        topic = await make_topic(kafka_bootstrap)
        transactional_id = f"txn-test-{uuid.uuid4().hex}"
        txn = producer(kafka_bootstrap, transactional_id)
        try:
            await txn.init_transactions(30)
            newer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": transactional_id})
            newer.init_transactions(30)
            newer.close()  # the id stays taken: the coordinator knows only its epoch
            await txn.begin_transaction()
            await txn.produce(topic, value=b"from the fenced one", partition=0)
            with pytest.raises(KafkaException) as failed:
                await txn.commit_transaction(30)
            assert failed.value.args[0].fatal() and failed.value.args[0].code() == KafkaError._FENCED
        finally:
            await txn.close()
        assert committed_values(kafka_bootstrap, topic, 0) == []
