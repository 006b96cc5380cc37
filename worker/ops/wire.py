"""The codec operator commands use: the worker's, with the schema registry when one is
configured (writer schemas are registered only by commands that encode)."""

from __future__ import annotations

from worker.codec import Codec, SchemaSet
from worker.config import Settings
from worker.registry import ConfluentRegistry, registry_for


async def codec_for(settings: Settings, *, writing: bool = False) -> Codec:
    schemas = SchemaSet()
    if not settings.schema_registry_url:
        return Codec(schemas)
    if writing:
        return Codec(schemas, await registry_for(settings, schemas))
    # Reading only fetches the writer schemas it meets; nothing is registered.
    auth = settings.schema_registry_basic_auth
    secret = auth.get_secret_value() if auth is not None else None
    return Codec(schemas, ConfluentRegistry(settings.schema_registry_url, basic_auth=secret))
