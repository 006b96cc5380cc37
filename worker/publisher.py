"""Publishing ExportRequested records to the request topic: ``export-worker produce``,
the demo, and the tests and benchmarks that feed a worker."""

from __future__ import annotations

from typing import Any

from confluent_kafka.aio import AIOProducer

from worker.codec import Codec
from worker.config import Settings
from worker.kafka import admin_client, ensure_topics, producer_config


class Publisher:
    """Publishes ExportRequested records keyed by request_id (Java-compatible partitioner)."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or Codec()
        self._producer: AIOProducer | None = None

    async def __aenter__(self) -> Publisher:
        await ensure_topics(self.settings, admin_client(self.settings))
        self._producer = AIOProducer(producer_config(self.settings), batch_size=1000, buffer_timeout=0.05)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.close()

    async def send(self, record: dict[str, Any], *, key: bytes | None = None) -> None:
        value = self.codec.encode("ExportRequested", record, topic=self.settings.topics.requests)
        await self.raw(value, key=key if key is not None else record["request_id"].encode())

    async def raw(self, value: bytes | None, *, key: bytes | None) -> None:
        assert self._producer is not None
        await self._producer.produce(self.settings.topics.requests, value=value, key=key)

    async def flush(self) -> None:
        assert self._producer is not None
        await self._producer.flush()
