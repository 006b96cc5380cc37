"""``pause``, ``resume`` and ``paused``: the control topic, through ``worker.control``.

A paused connection (or every connection of a paused vendor) submits nothing new; its
open jobs keep being polled to the end, so a pause drains it. Requests that arrive
meanwhile are accepted and wait; ``resume`` lets them be submitted.
"""

from __future__ import annotations

from typing import Any

from worker.config import Settings
from worker.control import control_key, publish_control, read_control
from worker.ops.errors import UsageError
from worker.ops.kafkaio import connect
from worker.ops.timeparse import format_ms
from worker.vendor_registry import VENDORS


async def set_paused(
    settings: Settings, target: str, *, vendor: bool, paused: bool, reason: str | None, by: str
) -> str:
    """Pause or resume a connection (or a vendor); returns the control key written."""
    if not target.strip():
        raise UsageError("name a connection, or a vendor with --vendor")
    if vendor and target not in VENDORS:
        raise UsageError(f"unknown vendor {target!r}; one of {', '.join(VENDORS)} (a connection needs no --vendor)")
    cluster = await connect(settings)
    await cluster.partitions(settings.topics.control)
    key = control_key(target, vendor=vendor)
    await publish_control(settings, key, paused=paused, reason=reason, by=by)
    return key.decode()


async def list_paused(settings: Settings) -> list[dict[str, Any]]:
    """Current pauses, one row per connection or vendor."""
    cluster = await connect(settings)
    await cluster.partitions(settings.topics.control)
    rows = []
    for key, value in sorted((await read_control(settings)).items()):
        if not value.get("paused"):
            continue
        kind, _, name = key.partition(":")
        at = value.get("at")
        rows.append(
            {
                "kind": kind,
                "name": name,
                "reason": value.get("reason") or "",
                "by": value.get("by") or "",
                "since": format_ms(at if isinstance(at, int) else None),
            }
        )
    return rows
