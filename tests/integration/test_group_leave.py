"""Leaving the consumer group on the real broker: each revocation is answered by the
worker's own callback, and a stopping worker hands its partitions back before it closes
its consumer, so close() has no revocation left to serve (served there, librdkafka can
wait forever for the torn-down group, holding the GIL: librdkafka#4041)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from tests.conftest import itron_connection, make_settings, running
from worker.config import TopicSettings
from worker.runtime import Worker
from worker.runtime.clients import GroupConsumer, aio_consumer
from worker.simulators.itron import ItronSimulator
from worker.testing import eventually


class RecordingConsumer:
    """The real AIOConsumer, with a log of the group calls and callbacks, each noted
    with whether close() was under way."""

    def __init__(self, real: GroupConsumer) -> None:
        self.real = real
        self.calls: list[tuple[str, frozenset[int], bool]] = []
        self._closing = False

    def _note(self, what: str, partitions: list[TopicPartition] | None = None) -> None:
        self.calls.append((what, frozenset(tp.partition for tp in partitions or []), self._closing))

    def _callback(self, name: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        async def noted(consumer: Any, partitions: list[TopicPartition]) -> None:
            self._note(name, partitions)
            await callback(self, partitions)  # the worker's calls from it come here too

        return noted

    async def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        await self.real.subscribe(topics, **{k: self._callback(k, cb) for k, cb in callbacks.items()})

    async def unsubscribe(self) -> None:
        self._note("unsubscribe")
        await self.real.unsubscribe()

    async def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self._note("incremental_unassign", partitions)
        await self.real.incremental_unassign(partitions)

    async def close(self) -> None:
        self._closing = True
        self._note("close")
        await self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def revocations(self) -> list[tuple[str, frozenset[int], bool]]:
        """The callbacks that took partitions away (librdkafka may also call one with none)."""
        return [c for c in self.calls if c[0] in ("on_revoke", "on_lost") and c[1]]

    def unassigned(self) -> list[frozenset[int]]:
        return [c[1] for c in self.calls if c[0] == "incremental_unassign" and c[1]]

    def leaving(self) -> list[tuple[str, frozenset[int], bool]]:
        """The calls from the stopping worker's unsubscribe on."""
        return self.calls[[c[0] for c in self.calls].index("unsubscribe") :]


class TestLeavingTheGroup:
    async def test_revocations_are_answered_and_served_before_close(self, kafka_bootstrap: str, tmp_path: Path) -> None:
        topics = TopicSettings(partitions=4).prefixed(f"t{uuid.uuid4().hex[:10]}.")
        sim = ItronSimulator(seed=8)
        await sim.start()
        conn = {"itron": itron_connection(sim.base_url)}
        consumers: list[RecordingConsumer] = []

        def recording(config: dict[str, Any]) -> GroupConsumer:
            consumers.append(RecordingConsumer(aio_consumer(config)))
            return consumers[-1]

        def worker(name: str) -> Worker:
            settings = make_settings(kafka_bootstrap, topics, tmp_path / name)
            return Worker(settings, connections=conn, consumer_factory=recording)

        first, second = worker("a"), worker("b")
        try:
            async with running(first):
                await eventually(lambda: len(first.partitions) == 4, timeout=30, what="the first worker owns all")
                async with running(second):
                    await eventually(
                        lambda: len(first.partitions) == len(second.partitions) == 2, timeout=60, what="two each"
                    )
                    given_back = frozenset(second.partitions)
                    # The rebalance took two partitions from the first worker: its callback
                    # answered with their unassignment, outside any close().
                    assert consumers[0].revocations() == [("on_revoke", given_back, False)]
                    assert consumers[0].unassigned() == [given_back]
                await eventually(lambda: len(first.partitions) == 4, timeout=60, what="the first worker owns all again")
        finally:
            await sim.stop()
        for consumer in consumers:
            assert consumer.calls[-1][0] == "close", consumer.calls
            leaving = consumer.leaving()
            # What it owned at the stop was revoked after the unsubscribe and before the
            # close, and the callback answered each revocation.
            revoked = [c for c in leaving if c[0] == "on_revoke"]
            assert revoked and not any(in_close for _, _, in_close in revoked), consumer.calls
            assert [c[1] for c in leaving if c[0] == "incremental_unassign"] == [c[1] for c in revoked]
        assert revoked_when_leaving(consumers[0]) == frozenset(range(4))
        assert revoked_when_leaving(consumers[1]) == given_back


def revoked_when_leaving(consumer: RecordingConsumer) -> frozenset[int]:
    return frozenset().union(*(c[1] for c in consumer.leaving() if c[0] == "on_revoke"))
