"""``list_offsets`` asks for the topic's metadata first and issues one request at a time
per admin client, each held until its answers are in: librdkafka 2.16 can free a
ListOffsets request whose leader lookup missed the metadata cache under the thread that
issued it (a segmentation fault in ``AdminClient.list_offsets``). The offsets themselves
are read from a real broker in tests/integration/test_compacted_reads.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from typing import Any

from confluent_kafka import IsolationLevel, TopicPartition

from tests.unit.fake_metadata import Metadata, Partition, Topic
from worker.kafka import list_offsets, log_starts
from worker.testing import eventually


@dataclass
class Answer:
    offset: int


class AnsweringLater:
    """An admin client's ``list_offsets`` whose answers the test gives, request by request."""

    def __init__(self, leaders: list[dict[int, int]] | None = None) -> None:
        self.requests: list[dict[TopicPartition, concurrent.futures.Future[Answer]]] = []
        self.most_unanswered = 0
        # The leaders each metadata answer names, in turn (the last one from then on).
        self.leaders = leaders or [{p: 1 for p in range(4)}]
        self.asked: list[str] = []  # "metadata" and "offsets", in the order they were asked for

    def list_topics(self, *, topic: str, timeout: float) -> Metadata:
        leaders = self.leaders[min(self.asked.count("metadata"), len(self.leaders) - 1)]
        self.asked.append("metadata")
        return Metadata({topic: Topic({p: Partition(leader) for p, leader in leaders.items()})})

    def list_offsets(self, request: dict[TopicPartition, Any], **_: Any) -> dict[TopicPartition, Any]:
        futures = {tp: concurrent.futures.Future[Answer]() for tp in request}
        self.requests.append(futures)
        self.asked.append("offsets")
        self.most_unanswered = max(self.most_unanswered, self.unanswered())
        return futures

    def unanswered(self) -> int:
        return sum(any(not f.done() for f in futures.values()) for futures in self.requests)

    def answer(self, index: int, offset: int) -> None:
        for future in self.requests[index].values():
            future.set_result(Answer(offset))


class TestOneRequestAtATime:
    async def test_a_second_lookup_on_the_same_client_waits_for_the_first_ones_answers(self) -> None:
        admin = AnsweringLater()
        first = asyncio.create_task(list_offsets(admin, "t", [0, 1], IsolationLevel.READ_UNCOMMITTED))  # type: ignore[arg-type]
        second = asyncio.create_task(log_starts(admin, "t", [0, 1]))  # type: ignore[arg-type]
        await eventually(lambda: len(admin.requests) == 1, timeout=5, interval=0.001)
        for _ in range(20):  # the second has had turns to ask, and did not
            await asyncio.sleep(0)
        assert len(admin.requests) == 1
        admin.answer(0, 7)
        await eventually(lambda: len(admin.requests) == 2, timeout=5, interval=0.001)
        admin.answer(1, 3)
        assert (await first, await second) == ({0: 7, 1: 7}, {0: 3, 1: 3})
        assert admin.most_unanswered == 1

    async def test_lookups_on_different_clients_do_not_wait_for_each_other(self) -> None:
        one, other = AnsweringLater(), AnsweringLater()
        first = asyncio.create_task(list_offsets(one, "t", [0], IsolationLevel.READ_COMMITTED))  # type: ignore[arg-type]
        second = asyncio.create_task(list_offsets(other, "t", [0], IsolationLevel.READ_COMMITTED))  # type: ignore[arg-type]
        await eventually(lambda: len(one.requests) == len(other.requests) == 1, timeout=5, interval=0.001)
        other.answer(0, 5)
        assert await second == {0: 5}
        one.answer(0, 9)
        assert await first == {0: 9}


class TestLeadersCachedFirst:
    async def test_offsets_are_asked_for_once_the_metadata_names_every_leader(self) -> None:
        # A partition without a leader yet (a topic just created), then all of them.
        admin = AnsweringLater(leaders=[{0: 1, 1: -1}, {0: 1, 1: -1}, {0: 1, 1: 1}])
        lookup = asyncio.create_task(list_offsets(admin, "t", [0, 1], IsolationLevel.READ_UNCOMMITTED))  # type: ignore[arg-type]
        await eventually(lambda: len(admin.requests) == 1, timeout=5, interval=0.001)
        assert admin.asked == ["metadata", "metadata", "metadata", "offsets"]
        admin.answer(0, 4)
        assert await lookup == {0: 4, 1: 4}

    async def test_each_lookup_asks_for_the_metadata_again(self) -> None:
        admin = AnsweringLater()
        for offset in (2, 5):
            lookup = asyncio.create_task(log_starts(admin, "t", [0]))  # type: ignore[arg-type]
            await eventually(lambda: admin.unanswered() == 1, timeout=5, interval=0.001)
            admin.answer(len(admin.requests) - 1, offset)
            assert await lookup == {0: offset}
        assert admin.asked == ["metadata", "offsets", "metadata", "offsets"]
