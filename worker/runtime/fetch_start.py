"""Resuming request partitions so that their fetches start at once.

librdkafka applies a resume on its main thread, but a broker's thread notices it only at
its next wake-up: with nothing else to fetch, up to a second later (confluent-kafka-go#630).
Measured here: 0.6 s from resume to the first record on the embedded broker, and 1.0 s
from a worker's restore (/readyz) to its first request read, on every takeover and every
reopening of intake. A request to the broker wakes its thread, so after a resume the
worker asks for the topic's metadata. That request goes to one broker: in a cluster
where the partitions' leaders are several brokers, the others start fetching at their
next wake-up, as before. (A watermark request per leader would reach each, but it waits
for that same sleeping thread: measured, it timed out after 0.5 s.) A nudge only: if it
fails, fetching starts at the next wake-up anyway.
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaException, TopicPartition

from worker.runtime.clients import GroupConsumer

log = structlog.get_logger("export_worker")

# What the nudge may add to the loop's turn. A broker that does not answer this fast
# will not fetch sooner for it.
NUDGE_TIMEOUT_S = 0.5


async def resume_fetching(consumer: GroupConsumer, partitions: list[TopicPartition]) -> None:
    """Resume ``partitions`` (of one topic) and wake a broker's thread with a metadata request."""
    if not partitions:
        return
    await consumer.resume(partitions)
    topic = partitions[0].topic
    try:
        await consumer.list_topics(topic, timeout=NUDGE_TIMEOUT_S)
    except KafkaException as exc:
        log.debug("fetch nudge after resume failed", topic=topic, error=str(exc))
