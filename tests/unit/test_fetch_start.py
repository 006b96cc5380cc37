"""Resuming partitions wakes their leaders' broker threads (``worker.runtime.fetch_start``).

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


async def test_resumes_and_asks_each_leader_once() -> None:
    consumer = FakeConsumer()
    consumer.leaders = {0: 1, 1: 2, 2: 1, 3: 3, 4: 2}
    await resume_fetching(consumer, tps(0, 1, 2, 3, 4))
    assert consumer.resumed == [0, 1, 2, 3, 4]
    # One partition per leader (brokers 1, 2 and 3), the first named of each.
    assert consumer.watermarks_asked == [0, 1, 3]


async def test_a_partition_missing_from_the_metadata_is_still_nudged() -> None:
    consumer = FakeConsumer()
    consumer.leaders = {0: 1}
    await resume_fetching(consumer, tps(0, 7))
    assert consumer.resumed == [0, 7] and consumer.watermarks_asked == [0, 7]


async def test_a_failed_nudge_leaves_the_partitions_resumed() -> None:
    consumer = FakeConsumer()
    consumer.list_topics_raises = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    await resume_fetching(consumer, tps(0, 1))
    assert consumer.resumed == [0, 1] and consumer.paused_now == set()
    assert consumer.watermarks_asked == []


async def test_nothing_to_resume_asks_nothing() -> None:
    consumer = FakeConsumer()
    await resume_fetching(consumer, [])
    assert consumer.resumed == [] and consumer.watermarks_asked == []
