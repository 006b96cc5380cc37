"""Resuming partitions wakes a broker's thread (``worker.runtime.fetch_start``).

What the nudge saves (librdkafka starting a resumed partition's fetch up to a second
late) only a real broker shows: ``make bench`` reports the time from /readyz to the
first request read."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tests.unit.runtime_fakes import FakeConsumer
from worker.runtime.fetch_start import resume_fetching

TOPIC = "export.requests"


def tps(*numbers: int) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, n) for n in numbers]


async def test_resumes_then_asks_for_the_topics_metadata() -> None:
    consumer = FakeConsumer()
    await consumer.pause(tps(0, 1, 2))
    await resume_fetching(consumer, tps(0, 2))
    assert consumer.resumed == [0, 2] and consumer.paused_now == {1}
    assert consumer.metadata_requests == [TOPIC]


async def test_a_failed_nudge_leaves_the_partitions_resumed() -> None:
    consumer = FakeConsumer()
    await consumer.pause(tps(0, 1))
    consumer.list_topics_raises = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    await resume_fetching(consumer, tps(0, 1))
    assert consumer.resumed == [0, 1] and consumer.paused_now == set()
    assert consumer.metadata_requests == [TOPIC]


async def test_nothing_to_resume_asks_nothing() -> None:
    consumer = FakeConsumer()
    await resume_fetching(consumer, [])
    assert consumer.resumed == [] and consumer.metadata_requests == []
