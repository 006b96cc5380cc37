"""Turn JSON requests into ExportRequested records and publish them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from worker.codec import Codec
from worker.config import Settings
from worker.kafka import admin_client, ensure_topics
from worker.publisher import Publisher
from worker.registry import registry_for
from worker.vendor_registry import JOB_VENDORS

JOB_TYPES = {*JOB_VENDORS, "CancelExport"}
_UNION_RECORDS = {"OpenGateEntities", "OpenGateTag", "OpenGateFilter"}


def _avro_job(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """{"type": "ItronBatchRequest", ...} -> ("export.v1.ItronBatchRequest", {...})."""
    if not isinstance(job, dict) or job.get("type") not in JOB_TYPES:
        raise ValueError(f"job needs a type, one of {sorted(JOB_TYPES)}")
    body = {k: v for k, v in job.items() if k != "type"}
    target = body.get("target")
    if isinstance(target, dict) and target.get("type") in _UNION_RECORDS:
        body["target"] = (f"export.v1.{target['type']}", {k: v for k, v in target.items() if k != "type"})
    return f"export.v1.{job['type']}", body


def to_record(data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("each request must be a JSON object")
    for field in ("connection", "job"):
        if not data.get(field):
            raise ValueError(f"request is missing {field!r}")
    requested = data.get("requested_at")
    return {
        "request_id": data.get("request_id") or str(uuid.uuid4()),
        "tenant": data.get("tenant") or "default",
        "connection": data["connection"],
        "requested_at": dt.datetime.fromisoformat(requested) if isinstance(requested, str) else dt.datetime.now(dt.UTC),
        "correlation_id": data.get("correlation_id"),
        "labels": dict(data.get("labels") or {}),
        "job": _avro_job(data["job"]),
        "replay_of": data.get("replay_of"),
    }


def load_requests(text: str) -> list[dict[str, Any]]:
    """One JSON object, a JSON list, or JSON lines."""
    text = text.strip()
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [to_record(item) for item in items]


async def publish_requests(settings: Settings, records: list[dict[str, Any]]) -> list[str]:
    await ensure_topics(settings, admin_client(settings))
    codec = Codec()
    registry = await registry_for(settings, codec.schemas)
    if registry is not None:
        codec = Codec(codec.schemas, registry)
    async with Publisher(settings, codec) as pub:
        for record in records:
            await pub.send(record)
        await pub.flush()
    return [r["request_id"] for r in records]
