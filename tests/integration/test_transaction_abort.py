"""A transaction that fails mid-run: the worker aborts it, rebuilds the state of its
partitions from Kafka, rewinds to the committed offsets, and still finishes every
request once (no lost request, no repeated event, no leaked submit capacity)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from tests.conftest import itron_connection, running
from worker.codec import Codec
from worker.config import Settings
from worker.runtime import ProducerStuck, TransactionalProducer, Worker
from worker.runtime.clients import threaded_producer
from worker.runtime.transactions import CallTimeouts
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id


class WrappedProducer:
    """The worker's real transactional producer, with a fault injected at one call."""

    def __init__(self, real: TransactionalProducer) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FailingOnce(WrappedProducer):
    """Fails the commit of the first transaction that carries at least ``after`` records
    (they were produced, as in a real failure, and the worker must abort them)."""

    def __init__(self, real: TransactionalProducer, *, after: int) -> None:
        super().__init__(real)
        self.after = after
        self.records = 0
        self.failed = 0

    async def begin_transaction(self) -> None:
        self.records = 0
        await self.real.begin_transaction()

    async def produce(self, topic: str, **kwargs: Any) -> Any:
        self.records += 1
        return await self.real.produce(topic, **kwargs)

    async def commit_transaction(self, timeout: float, offsets: Any = None, metadata: Any = None) -> None:
        if self.failed == 0 and self.records >= self.after:
            self.failed += 1
            raise KafkaException(KafkaError(KafkaError._FAIL, "injected failure", txn_requires_abort=True))
        await self.real.commit_transaction(timeout, offsets, metadata)


class FailingOnSubmitted(WrappedProducer):
    """Fails the commit of the first transaction that publishes a SUBMITTED status: the
    job id a vendor gave is then known only to the worker's memory."""

    def __init__(self, real: TransactionalProducer, *, status_topic: str) -> None:
        super().__init__(real)
        self.status_topic = status_topic
        self.codec = Codec()
        self.submitted = 0
        self.failed = 0

    async def begin_transaction(self) -> None:
        self.submitted = 0
        await self.real.begin_transaction()

    async def produce(self, topic: str, **kwargs: Any) -> Any:
        if (
            topic == self.status_topic
            and self.codec.decode("JobStatusChanged", kwargs["value"])["status"] == "SUBMITTED"
        ):
            self.submitted += 1
        return await self.real.produce(topic, **kwargs)

    async def commit_transaction(self, timeout: float, offsets: Any = None, metadata: Any = None) -> None:
        if self.failed == 0 and self.submitted:
            self.failed += 1
            raise KafkaException(KafkaError(KafkaError._FAIL, "injected failure", txn_requires_abort=True))
        await self.real.commit_transaction(timeout, offsets, metadata)


class StuckOnce(WrappedProducer):
    """The first commit that sends offsets never returns, as librdkafka#5456 makes
    send_offsets_to_transaction do when the group coordinator goes away mid-call (its
    own timeout is not enforced)."""

    hung = False

    async def commit_transaction(self, timeout: float, offsets: Any = None, metadata: Any = None) -> None:
        if offsets and not self.hung:
            self.hung = True
            await asyncio.Event().wait()  # never sent, never answered
        await self.real.commit_transaction(timeout, offsets, metadata)


def wrapping(cls: type[WrappedProducer], **kwargs: Any) -> tuple[list[Any], Any]:
    """A producer factory for the worker that wraps its real producer in ``cls``; the
    list receives the wrapper once the worker has made it."""
    made: list[Any] = []

    def factory(config: dict[str, Any]) -> Any:
        made.append(cls(threaded_producer(config), **kwargs))
        return made[-1]

    return made, factory


class TestTransactionAbort:
    async def test_a_failed_transaction_is_redone_from_kafka_without_loss(self, settings: Settings) -> None:
        sim = ItronSimulator(timing=Timing(stages=(0.3, 0.3, 0.3)), seed=9)
        await sim.start()
        try:
            conn = itron_connection(sim.base_url, max_concurrency=4)
            made, factory = wrapping(FailingOnce, after=30)
            worker = Worker(settings, connections={"itron": conn}, producer_factory=factory)
            ids = [f"ab-{i}" for i in range(120)]
            async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
                # Requests keep arriving while the failure happens, so the batch read right
                # after it holds requests of partitions that are being rewound.
                for r in ids:
                    await pub.send(itron_request(r))
                    await pub.flush()
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="all terminal")
                await eventually(lambda: worker.dispatcher.lanes["itron"].intents == 0, what="intents released")
            assert made[0].failed == 1
            assert worker.metrics.transactions.labels("aborted")._value.get() >= 1
        finally:
            await sim.stop()
        originals = Counter(f["request_id"] for f in out.files if not f["reannounced"])
        created = Counter(j.match_key for j in sim.jobs.values())
        for r in ids:
            events = out.events(r)
            assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), (r, events)
            assert events[-1]["status"] == "SUCCEEDED"
            assert originals[r] == 1
            jobs = created[correlation_id(JobSpec(r, "acme", "itron", {}))]
            assert jobs >= 1
            if jobs > 1:
                assert any(e["possible_duplicate"] for e in events), r
        # Slots all given back: nothing is left in flight or waiting.
        assert worker.dispatcher.lanes["itron"].limiter.in_flight == 0

    async def test_a_failed_transaction_loses_no_vendor_answer(self, settings: Settings) -> None:
        """The answers applied since the last commit (a submit's job id above all) are
        applied again to the state read back: no job is submitted twice and nothing is
        flagged possible_duplicate, although the vendor cannot be asked (Itron)."""
        sim = ItronSimulator(timing=Timing(stages=(0.3, 0.3, 0.3)), seed=5)
        await sim.start()
        try:
            made, factory = wrapping(FailingOnSubmitted, status_topic=settings.topics.status)
            worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)}, producer_factory=factory)
            ids = [f"lost-{i}" for i in range(80)]
            async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="all terminal")
            assert made[0].failed == 1
        finally:
            await sim.stop()
        created = Counter(j.match_key for j in sim.jobs.values())
        for r in ids:
            events = out.events(r)
            assert events[-1]["status"] == "SUCCEEDED", (r, events)
            assert created[correlation_id(JobSpec(r, "acme", "itron", {}))] == 1, r
            assert not any(e["possible_duplicate"] for e in events), r

    async def test_a_stuck_transactional_call_ends_the_worker_and_the_next_owner_finishes(
        self, settings: Settings
    ) -> None:
        """No silent hang: the stuck worker stops (the CLI then exits at once), commits
        nothing more, and a fresh worker finishes every request exactly once."""
        sim = ItronSimulator(timing=Timing(stages=(0.2, 0.2, 0.2)), seed=3)
        await sim.start()
        ids = [f"st-{i}" for i in range(20)]
        try:
            conn = itron_connection(sim.base_url)
            made, factory = wrapping(StuckOnce)
            stuck = Worker(settings, connections={"itron": conn}, producer_factory=factory)
            # The stand-in hangs the first commit with offsets: give up on it soon.
            stuck.writer.timeouts = CallTimeouts(commit_s=2.0, stuck_margin_s=0.5)
            async with Publisher(settings) as pub, OutputReader(settings) as reader:
                task = asyncio.create_task(stuck.run(asyncio.Event()))
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                with pytest.raises(ProducerStuck):
                    await asyncio.wait_for(task, 60)
                assert made[0].hung and stuck.producer_stuck
                # The worker leaves its producer unclosed (a real stuck call would block
                # close forever); here the call was a stand-in, so the test can close it.
                assert stuck.producer is not None
                await stuck.producer.close()
                async with running(Worker(settings, connections={"itron": conn})):
                    out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="all terminal")
        finally:
            await sim.stop()
        originals = Counter(f["request_id"] for f in out.files if not f["reannounced"])
        for r in ids:
            events = out.events(r)
            assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), (r, events)
            assert events[-1]["status"] == "SUCCEEDED" and originals[r] == 1
