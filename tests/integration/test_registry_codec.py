"""Confluent Schema Registry framing against a registry REST server on loopback."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest

from worker.codec import Codec, SchemaSet
from worker.errors import DecodeError
from worker.registry import ConfluentRegistry
from worker.simulators.registry import FakeSchemaRegistry
from worker.testing import itron_request


@pytest.fixture
async def registry_url() -> AsyncIterator[str]:
    fake = FakeSchemaRegistry()
    url = await fake.start()
    try:
        yield url
    finally:
        await fake.stop()


class TestRegistryFraming:
    async def test_encode_uses_magic_zero_and_the_registered_id(self, registry_url: str) -> None:
        schemas = SchemaSet()
        registry = ConfluentRegistry(registry_url)
        schema_id = await registry.register("export.requests-value", schemas.by_name["ExportRequested"].raw)
        data = Codec(schemas, registry).encode("ExportRequested", itron_request("r1"), topic="export.requests")
        assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == schema_id

    async def test_a_second_worker_fetches_the_writer_schema_by_id(self, registry_url: str) -> None:
        schemas = SchemaSet()
        writer = ConfluentRegistry(registry_url)
        await writer.register("export.requests-value", schemas.by_name["ExportRequested"].raw)
        data = Codec(schemas, writer).encode("ExportRequested", itron_request("r2"), topic="export.requests")
        reader = Codec(SchemaSet(), ConfluentRegistry(registry_url))
        with pytest.raises(DecodeError):
            reader.decode("ExportRequested", data)  # not cached yet: sync decode cannot fetch
        decoded = await reader.decode_async("ExportRequested", data)
        assert decoded["request_id"] == "r2"

    async def test_single_object_encoding_is_still_read_in_registry_mode(self, registry_url: str) -> None:
        """Decoding picks the framing by the first byte."""
        soe = Codec().encode("ExportRequested", itron_request("r3"))
        decoded = await Codec(SchemaSet(), ConfluentRegistry(registry_url)).decode_async("ExportRequested", soe)
        assert decoded["request_id"] == "r3"

    async def test_unknown_schema_id_is_a_decode_error(self, registry_url: str) -> None:
        codec = Codec(SchemaSet(), ConfluentRegistry(registry_url))
        with pytest.raises(DecodeError) as err:
            await codec.decode_async("ExportRequested", b"\x00\x00\x00\x03\xe7payload")
        assert err.value.reason_code == "unknown_schema"

    async def test_schema_id_of_another_record_is_a_mismatch(self, registry_url: str) -> None:
        schemas = SchemaSet()
        registry = ConfluentRegistry(registry_url)
        await registry.register("export.files-value", schemas.by_name["FileReady"].raw)
        data = Codec(schemas, registry).encode(
            "FileReady",
            {"request_id": "r", "vendor": "v", "vendor_job_id": "j", "url": "u", "format": "csv", "produced_at": 0},
            topic="export.files",
        )
        with pytest.raises(DecodeError) as err:
            await Codec(SchemaSet(), ConfluentRegistry(registry_url)).decode_async("ExportRequested", data)
        assert err.value.reason_code == "schema_mismatch"
