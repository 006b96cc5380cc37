"""What a consumer group committed, as the console's fleet page reads it (its lag): asked by
a consumer of the group that never joins it, never by the admin client, whose
ListConsumerGroupOffsets segfaults librdkafka 2.16 when the group's coordinator is not
ready (``Cluster.committed``)."""

from __future__ import annotations

import asyncio

from confluent_kafka import Consumer, TopicPartition

from worker.config import Settings
from worker.kafka import admin_client, ensure_topics
from worker.ops.kafkaio import client_config, connect


def commit(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({**client_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(settings.topics.requests, p, o) for p, o in offsets.items()]
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()


class TestCommitted:
    async def test_the_offsets_a_group_committed_and_none_elsewhere(self, settings: Settings) -> None:
        await ensure_topics(settings, admin_client(settings))
        group = f"{settings.group_id}-committed"
        await asyncio.to_thread(commit, settings, group, {0: 5, 2: 9})
        cluster = await connect(settings)
        partitions = range(await cluster.partitions(settings.topics.requests))
        found = await cluster.committed(group, settings.topics.requests, partitions)
        assert found[0] == 5 and found[2] == 9
        assert all(found[p] < 0 for p in partitions if p not in (0, 2))

    async def test_a_group_that_never_committed(self, settings: Settings) -> None:
        await ensure_topics(settings, admin_client(settings))
        cluster = await connect(settings)
        found = await cluster.committed(f"{settings.group_id}-never", settings.topics.requests, [0, 1])
        assert set(found) == {0, 1} and all(offset < 0 for offset in found.values())
