"""The one reader of export.jobs (``worker.kafka.stream_compacted``) on the real broker:
where it starts. A restore starts each partition at an absolute offset (its log start,
looked up first, or a warm store's offset); a start the log no longer has must fail the
read, which the restore retries from a fresh look, never skip the partition."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.aio import AIOProducer

from worker.config import Settings
from worker.kafka import (
    BrokerUnavailable,
    Chunk,
    admin_client,
    base_config,
    list_offsets,
    log_starts,
    stream_compacted,
)

RECORDS = 10
DELETED = 4  # records before this offset are deleted (DeleteRecords moves the log start)


async def topic_with_a_moved_start(settings: Settings) -> str:
    """One partition holding keys k0..k9 at offsets 0..9, of which 0..3 are deleted."""
    topic = f"reads-{uuid.uuid4().hex[:10]}"
    admin = admin_client(settings)
    (created,) = admin.create_topics([NewTopic(topic, 1, 1)]).values()
    await asyncio.wrap_future(created)
    producer = AIOProducer(settings.librdkafka())
    for i in range(RECORDS):
        await producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
    await producer.flush()
    await producer.close()
    (deleted,) = admin.delete_records([TopicPartition(topic, 0, DELETED)]).values()
    await asyncio.wrap_future(deleted)
    return topic


async def read(settings: Settings, topic: str, start: int) -> tuple[dict[bytes, bytes | None], dict[int, int]]:
    seen: dict[bytes, bytes | None] = {}

    async def fold(chunk: Chunk) -> None:
        seen.update(chunk.latest)

    conf = {**base_config(settings), "group.id": f"reads-{uuid.uuid4().hex[:6]}"}
    ended = await stream_compacted(conf, topic, {0: start}, fold, stall_s=20)
    return seen, ended


class TestWhereAReadStarts:
    async def test_the_log_start_is_looked_up_as_an_absolute_offset_and_read_from(self, settings: Settings) -> None:
        topic = await topic_with_a_moved_start(settings)
        starts = await log_starts(admin_client(settings), topic, [0])
        assert starts == {0: DELETED}
        seen, ended = await read(settings, topic, starts[0])
        assert sorted(seen) == sorted(f"k{i}".encode() for i in range(DELETED, RECORDS))
        assert ended == {0: RECORDS}

    async def test_lookups_gathered_on_one_fresh_client_all_answer(self, settings: Settings) -> None:
        """As ``log_facts`` asks: starts and ends at once, on a client that has not met
        the topic (they take turns: ``offsets_lock``)."""
        topic = await topic_with_a_moved_start(settings)
        admin = admin_client(settings)
        found = await asyncio.gather(
            *(log_starts(admin, topic, [0]) for _ in range(4)),
            *(list_offsets(admin, topic, [0], IsolationLevel.READ_COMMITTED) for _ in range(4)),
        )
        assert found == [{0: DELETED}] * 4 + [{0: RECORDS}] * 4

    async def test_the_logical_beginning_still_reads_what_the_log_has(self, settings: Settings) -> None:
        topic = await topic_with_a_moved_start(settings)
        seen, ended = await read(settings, topic, OFFSET_BEGINNING)
        assert len(seen) == RECORDS - DELETED and ended == {0: RECORDS}

    async def test_a_start_the_log_no_longer_has_fails_the_read_instead_of_skipping_to_the_end(
        self, settings: Settings
    ) -> None:
        topic = await topic_with_a_moved_start(settings)
        with pytest.raises(BrokerUnavailable, match=r"reading .*\[0\]"):
            await read(settings, topic, 1)  # looked up before the records were deleted


class TestHeaders:
    async def test_the_asked_header_of_each_keys_last_record_is_handed_over(self, settings: Settings) -> None:
        """``header``: the value of that header on each key's last record (the last one
        of several), and none for a key whose last record lacks it, even if an earlier
        record had it (restore reads the header instead of the value it goes with)."""
        topic = f"heads-{uuid.uuid4().hex[:10]}"
        admin = admin_client(settings)
        (created,) = admin.create_topics([NewTopic(topic, 1, 1)]).values()
        await asyncio.wrap_future(created)
        producer = Producer(settings.librdkafka())
        for key, headers in [
            (b"a", [("h", b"a1")]),
            (b"b", [("h", b"b1")]),
            (b"b", None),  # b's last record has none
            (b"c", [("other", b"x"), ("h", b"c1"), ("h", b"c2")]),
            (b"d", [("other", b"y")]),
        ]:
            producer.produce(topic, key=key, value=b"v", partition=0, headers=headers)
        assert producer.flush(30) == 0
        heads: dict[bytes, bytes] = {}
        latest: dict[bytes, bytes | None] = {}

        async def fold(chunk: Chunk) -> None:
            assert chunk.heads is not None
            for key in chunk.latest:
                heads.pop(key, None)  # a later chunk's record of a key replaces the earlier
            latest.update(chunk.latest)
            heads.update(chunk.heads)

        conf = {**base_config(settings), "group.id": f"reads-{uuid.uuid4().hex[:6]}"}
        await stream_compacted(conf, topic, {0: 0}, fold, stall_s=20, header="h")
        assert sorted(latest) == [b"a", b"b", b"c", b"d"]
        assert heads == {b"a": b"a1", b"c": b"c2"}
