"""The CLI finds a key's partition with Kafka's own partitioner."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.aio import AIOProducer

from tests.ops.conftest import consume_all
from worker.config import Settings
from worker.kafka import admin_client, ensure_topics, producer_config
from worker.ops.partitioner import murmur2, partition_for

# Computed once with the Java client's org.apache.kafka.common.utils.Utils.murmur2
# (kafka-clients 4.1.1): key (UTF-8), murmur2, and toPositive(murmur2) % 3, % 6, % 100.
JAVA_REFERENCE = [
    (b"", 275646681, 0, 3, 81),
    (b"a", -1563381124, 1, 4, 24),
    (b"ab", 316155434, 2, 2, 34),
    (b"abc", 479470107, 0, 3, 7),
    (b"abcd", -1323649548, 2, 2, 0),
    (b"abcde", 461995741, 1, 1, 41),
    (b"request-1", -293023489, 1, 1, 59),
    (b"21", -973932308, 0, 0, 40),
    (b"kafka", -798503068, 1, 4, 80),
    ("0123456789abcdef0123456789abcdef-éü".encode(), 1976085243, 0, 3, 43),
    (b"export.v1 request 42", -1854517755, 2, 5, 93),
    (bytes([0xFF, 0x80, 0x00, 0x01, 0xC3, 0x01, 0x7F]), 1218824460, 0, 0, 60),
]


class TestMurmur2:
    @pytest.mark.parametrize(("key", "expected", "p3", "p6", "p100"), JAVA_REFERENCE)
    def test_matches_the_java_client(self, key: bytes, expected: int, p3: int, p6: int, p100: int) -> None:
        """Hash and partition agree with kafka-clients for every tail length and high bytes."""
        assert murmur2(key) == expected
        assert (partition_for(key, 3), partition_for(key, 6), partition_for(key, 100)) == (p3, p6, p100)

    def test_a_topic_needs_a_partition(self) -> None:
        with pytest.raises(ValueError):
            partition_for(b"x", 0)

    async def test_matches_where_the_worker_producer_puts_keys(self, settings: Settings) -> None:
        """librdkafka's murmur2_random (the worker's producer) lands keys where partition_for says."""
        await ensure_topics(settings, admin_client(settings))
        producer = AIOProducer(producer_config(settings), batch_size=100, buffer_timeout=0)
        keys = [f"req-{uuid.uuid4().hex[:6]}-{i}".encode() for i in range(40)]
        try:
            for key in keys:
                await producer.produce(settings.topics.requests, value=b"x", key=key)
            await producer.flush()
        finally:
            await producer.close()
        messages = await consume_all(settings, settings.topics.requests, settings.topics.partitions)
        placed = {m.key(): m.partition() for m in messages}
        assert placed == {k: partition_for(k, settings.topics.partitions) for k in keys}
        assert len(set(placed.values())) > 1
