"""A transaction that fails mid-run: the worker aborts it, rebuilds the state of its
partitions from Kafka, rewinds to the committed offsets, and still finishes every
request once (no lost request, no repeated event, no leaked submit capacity)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from tests.conftest import itron_connection, running
from worker.config import Settings
from worker.runtime import Batch, Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id


class FailingOnce(Worker):
    """Fails the transaction of the first batch that carries at least ``after`` records."""

    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after
        self.failed = 0

    async def _write(self, batch: Batch) -> KafkaException | None:
        if self.failed == 0 and len(batch.outgoing) >= self.after:
            self.failed += 1
            assert self.producer is not None
            await self.producer.begin_transaction()  # open, as a real failure would leave it
            return KafkaException(KafkaError(KafkaError._FAIL, "injected failure", txn_requires_abort=True))
        return await super()._write(batch)


class TestTransactionAbort:
    async def test_a_failed_transaction_is_redone_from_kafka_without_loss(self, settings: Settings) -> None:
        sim = ItronSimulator(timing=Timing(stages=(0.3, 0.3, 0.3)), seed=9)
        await sim.start()
        try:
            conn = itron_connection(sim.base_url, max_concurrency=4)
            worker = FailingOnce(settings, connections={"itron": conn}, after=30)
            ids = [f"ab-{i}" for i in range(120)]
            async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
                # Requests keep arriving while the failure happens, so the batch read right
                # after it holds requests of partitions that are being rewound.
                for r in ids:
                    await pub.send(itron_request(r))
                    await pub.flush()
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="all terminal")
                await eventually(lambda: worker.connections["itron"].intents == 0, what="intents released")
            assert worker.failed == 1
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
        assert worker.connections["itron"].limiter.in_flight == 0
