"""Confluent Schema Registry for the codec (``confluent_kafka.schema_registry``).

Writer schema ids are registered once at start-up (subject ``<topic>-value``,
TopicNameStrategy) so encoding never waits on the network; ids seen while decoding
are fetched once and cached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema

from worker.codec import SchemaSet
from worker.config import Settings
from worker.errors import ConfigError


class ConfluentRegistry:
    def __init__(self, url: str, *, basic_auth: str | None = None) -> None:
        conf: dict[str, Any] = {"url": url}
        if basic_auth:
            conf["basic.auth.user.info"] = basic_auth
        self.client = AsyncSchemaRegistryClient(conf)
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, Mapping[str, Any]] = {}

    async def register(self, subject: str, raw: Mapping[str, Any]) -> int:
        try:
            schema_id = await self.client.register_schema(subject, Schema(json.dumps(raw), "AVRO"))
        except Exception as exc:  # SchemaRegistryError, connection errors
            raise ConfigError(f"cannot register {subject} in the schema registry: {exc}") from None
        self._ids[subject] = schema_id
        self._schemas[schema_id] = raw
        return schema_id

    async def prepare(self, subjects: Mapping[str, Mapping[str, Any]]) -> None:
        for subject, raw in subjects.items():
            await self.register(subject, raw)

    def schema_id_for(self, subject: str) -> int:
        try:
            return self._ids[subject]
        except KeyError:
            raise ConfigError(f"subject {subject} was not registered at start-up") from None

    def cached_schema(self, schema_id: int) -> Mapping[str, Any] | None:
        return self._schemas.get(schema_id)

    async def fetch_schema(self, schema_id: int) -> Mapping[str, Any]:
        schema = await self.client.get_schema(schema_id)
        raw = json.loads(schema.schema_str or "null")
        if not isinstance(raw, dict):
            raise ValueError(f"schema id {schema_id} is not an Avro record schema")
        self._schemas[schema_id] = raw
        return raw


async def registry_for(settings: Settings, schemas: SchemaSet) -> ConfluentRegistry | None:
    """The registry configured in ``settings``, with our writer schemas registered."""
    if not settings.schema_registry_url:
        return None
    auth = settings.schema_registry_basic_auth
    registry = ConfluentRegistry(
        settings.schema_registry_url, basic_auth=auth.get_secret_value() if auth is not None else None
    )
    t = settings.topics
    by_topic = {
        t.requests: "ExportRequested",
        t.status: "JobStatusChanged",
        t.files: "FileReady",
        t.dlq: "DeadLetter",
        t.jobs: "JobState",
    }
    await registry.prepare({f"{topic}-value": schemas.by_name[name].raw for topic, name in by_topic.items()})
    return registry
