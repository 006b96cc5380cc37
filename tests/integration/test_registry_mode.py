"""A worker in Schema Registry mode, end to end, against a registry REST server on
loopback: it reads both framings, writes registry framing, and dead-letters ids the
registry does not know."""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer

from tests.conftest import itron_connection, make_settings, running
from worker.codec import Codec, SchemaSet
from worker.config import Settings, TopicSettings
from worker.errors import DecodeError
from worker.kafka import base_config
from worker.registry import ConfluentRegistry, registry_for
from worker.runtime import Worker
from worker.simulators.registry import FakeSchemaRegistry
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal


@pytest.fixture
async def registry() -> AsyncIterator[FakeSchemaRegistry]:
    fake = FakeSchemaRegistry()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def registry_settings(
    kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path, registry: FakeSchemaRegistry
) -> Settings:
    return make_settings(kafka_bootstrap, topics, tmp_path, schema_registry_url=registry.base_url)


async def raw_values(settings: Settings, topic: str, count: int) -> list[bytes]:
    """The first ``count`` committed values of ``topic``, as bytes."""
    consumer = AIOConsumer(
        {
            **base_config(settings),
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        },
        max_workers=1,
    )
    values: list[bytes] = []
    try:
        await consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.topics.partitions)])

        async def enough() -> bool:
            for msg in await consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    values.append(msg.value())
                elif msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(msg.error().str())
            return len(values) >= count

        await eventually(enough, what=f"{count} records on {topic}")
    finally:
        await consumer.close()
    return values


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


class TestRegistryMode:
    async def test_both_framings_are_read_and_output_is_registry_framed(
        self, registry_settings: Settings, registry: FakeSchemaRegistry, itron_sim: Any
    ) -> None:
        settings = registry_settings
        framed, soe = rid("framed"), rid("soe")
        producer_codec = Codec(SchemaSet(), await registry_for(settings, SchemaSet()))
        framed_bytes = producer_codec.encode("ExportRequested", itron_request(framed), topic=settings.topics.requests)
        request_id = registry.subjects[f"{settings.topics.requests}-value"][-1]
        assert framed_bytes[:5] == struct.pack(">bI", 0, request_id)
        soe_bytes = Codec().encode("ExportRequested", itron_request(soe))
        assert soe_bytes[:2] == b"\xc3\x01"

        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with (
            running(worker),
            Publisher(settings) as pub,
            OutputReader(settings, codec=producer_codec) as reader,
        ):
            await pub.raw(framed_bytes, key=framed.encode())
            await pub.raw(soe_bytes, key=soe.encode())
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, [framed, soe]), what="both terminal")
        assert out.statuses(framed)[-1] == "SUCCEEDED" and out.statuses(soe)[-1] == "SUCCEEDED"
        assert sorted(f["request_id"] for f in out.files) == sorted([framed, soe])

        # Every status event is registry framed with the id registered for export.status,
        # and a client that knows nothing yet decodes it by asking the registry.
        status_values = await raw_values(settings, settings.topics.status, len(out.status))
        status_id = registry.subjects[f"{settings.topics.status}-value"][-1]
        assert {v[:5] for v in status_values} == {struct.pack(">bI", 0, status_id)}
        fresh = Codec(SchemaSet(), ConfluentRegistry(registry.base_url))
        decoded = [await fresh.decode_async("JobStatusChanged", v) for v in status_values]
        assert sorted((e["request_id"], e["sequence"], e["status"]) for e in decoded) == sorted(
            (e["request_id"], e["sequence"], e["status"]) for e in out.status
        )
        with pytest.raises(DecodeError) as without_registry:
            Codec().decode("JobStatusChanged", status_values[0])
        assert without_registry.value.reason_code == "unknown_schema"

    async def test_a_schema_id_the_registry_does_not_know_is_dead_lettered(
        self, registry_settings: Settings, registry: FakeSchemaRegistry, itron_sim: Any
    ) -> None:
        settings = registry_settings
        body = Codec().encode("ExportRequested", itron_request("unknown-id"))[10:]
        value = struct.pack(">bI", 0, 4242) + body
        known = rid("after-unknown")
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with running(worker), Publisher(settings) as pub:
            assert 4242 not in registry.schemas
            reader_codec = Codec(SchemaSet(), await registry_for(settings, SchemaSet()))
            async with OutputReader(settings, codec=reader_codec) as reader:
                await pub.raw(value, key=b"unknown-id")
                await pub.send(itron_request(known))
                await pub.flush()
                out = await reader.wait_for(
                    lambda o: terminal(o, [known]) and any(d["key"] == b"unknown-id" for d in o.dlq),
                    what="dead letter and the next request done",
                )
        [letter] = [d for d in out.dlq if d["key"] == b"unknown-id"]
        assert letter["reason_code"] == "unknown_schema"
        assert letter["value"] == value
        assert "4242" in letter["reason"]
        assert out.statuses("unknown-id") == []
        assert out.statuses(known)[-1] == "SUCCEEDED"

    async def test_a_restarted_worker_answers_a_duplicate_from_its_registry_framed_store(
        self, registry_settings: Settings, itron_sim: Any
    ) -> None:
        """The store holds registry-framed values written by the previous process: the
        restarted worker (warm, a fresh codec) still decodes them for a duplicate."""
        settings = registry_settings
        done = rid("done")
        reading = Codec(SchemaSet(), await registry_for(settings, SchemaSet()))
        first = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with running(first), Publisher(settings) as pub, OutputReader(settings, codec=reading) as reader:
            await pub.send(itron_request(done))
            await pub.flush()
            await reader.wait_for(lambda o: terminal(o, [done], frozenset({"SUCCEEDED"})), what="succeeded")

            async def evicted() -> bool:
                return all(done not in part.jobs for part in first.partitions.values())

            await eventually(evicted, what="the finished job only in its store")
        again = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with running(again), Publisher(settings) as pub, OutputReader(settings, codec=reading) as reader:
            await pub.send(itron_request(done))
            await pub.flush()
            out = await reader.wait_for(lambda o: "DUPLICATE" in o.statuses(done), what="a DUPLICATE")
        assert out.statuses(done).count("SUCCEEDED") == 1 and len(itron_sim.jobs) == 1
        assert again.metrics.registry.get_sample_value("export_worker_store_opens_total", {"result": "warm"})
