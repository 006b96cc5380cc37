"""``pause``, ``resume`` and ``paused``: the control topic, through ``worker.control``.

A paused connection (or every connection of a paused vendor) submits nothing new; its
open jobs keep being polled to the end, so a pause drains it. Requests that arrive
meanwhile are accepted and wait; ``resume`` lets them be submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.config import Settings
from worker.control import BLOCK, ControlState, control_key, publish_control, read_control
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
    return [
        {"kind": p["kind"], "name": p["name"], "reason": p["reason"], "by": p["by"], "since": format_ms(p["at"])}
        for p in pauses_in(await read_control(settings))
    ]


def pauses_in(values: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pauses the workers honour (``ControlState``), by key, with who paused, why
    and when (epoch ms, None when not recorded)."""
    rows = []
    for key in sorted(ControlState.of(values).paused):
        value = values[key]
        kind, _, name = key.partition(":")
        at = value.get("at")
        rows.append({"key": key, "kind": kind, "name": name, "reason": value.get("reason") or "",
                     "by": value.get("by") or "", "at": at if isinstance(at, int) else None})  # fmt: skip
    return rows


def blocks_in(values: Mapping[str, Mapping[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """The fleet-wide rate-limit blocks still in force at ``now_ms`` (``ControlState``),
    by connection, with why and by whom."""
    rows = []
    for connection, until in sorted(ControlState.of(values).blocks.items()):
        if until > now_ms:
            value = values[BLOCK + connection]
            rows.append({"connection": connection, "until": until, "reason": value.get("reason") or "",
                         "by": value.get("by") or ""})  # fmt: skip
    return rows
