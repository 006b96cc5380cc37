"""``export-worker budgets``: how each connection's fleet budget is shared right now.

Read from what the fleet itself uses: the connections file (the fleet's numbers), the
consumer group's assignment of ``export.requests`` (each member's share, as every worker
computes it at its rebalance) and the control topic (connection blocks in force).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import KafkaException

from worker.budgets import BudgetMode, Ownership, share_of
from worker.config import ConnectionConfig, Settings
from worker.control import ControlState, read_control
from worker.exclusive import exclusive_kinds, home_partition
from worker.kafka import BrokerUnavailable
from worker.ops.kafkaio import Cluster, connect
from worker.ops.timeparse import format_ms


async def group_members(cluster: Cluster, settings: Settings) -> dict[str, set[int]]:
    """Each worker of the group (its client id) and the partitions of export.requests it owns."""
    futures = cluster.admin.describe_consumer_groups([settings.group_id], request_timeout=10)
    try:
        description = await asyncio.wrap_future(futures[settings.group_id])
    except KafkaException as exc:
        raise BrokerUnavailable(f"describe group {settings.group_id}: {exc.args[0].str()}") from None
    owned: dict[str, set[int]] = {}
    for member in description.members:
        partitions = member.assignment.topic_partitions if member.assignment else []
        owned[member.client_id] = {tp.partition for tp in partitions if tp.topic == settings.topics.requests}
    return owned


async def fleet_budgets(settings: Settings, connections: dict[str, ConnectionConfig]) -> dict[str, Any]:
    """Connections with their fleet numbers and blocks, and each worker's share."""
    cluster = await connect(settings)
    total = await cluster.partitions(settings.topics.requests)
    await cluster.partitions(settings.topics.control)
    members = await group_members(cluster, settings)
    control = ControlState.of(await read_control(settings))
    now_ms = int(time.time() * 1000)
    mode = settings.budget_mode
    rows = []
    for name, conf in sorted(connections.items()):
        until = control.blocks.get(name)
        blocked = until is not None and until > now_ms
        rows.append(
            {
                "connection": name,
                "vendor": conf.vendor,
                "rate_per_s": conf.rate_per_s,
                "max_concurrency": conf.max_concurrency,
                "paused": control.is_paused(name, conf.vendor),
                "blocked_until": format_ms(until) if blocked else "",
            }
        )
    shares = []
    prefix = f"{settings.group_id}-"
    for client, owned in sorted(members.items()):
        for name, conf in sorted(connections.items()):
            share = share_of(conf.rate_per_s, conf.max_concurrency, Ownership(len(owned), total), mode)
            shares.append(
                {
                    "worker": client.removeprefix(prefix),
                    "partitions": len(owned),
                    "connection": name,
                    "rate_per_s": round(share.rate_per_s, 3),
                    "max_concurrency": share.max_concurrency,
                }
            )
    # Where each exclusive kind's queue lives: its home partition and that partition's owner
    # (whose export_worker_exclusive_waiting counts the runs waiting there).
    exclusive = []
    for name, conf in sorted(connections.items()):
        for kind in sorted(exclusive_kinds(conf.vendor, conf.exclusive_kinds)):
            home = home_partition(name, kind, total)
            owner = next((c.removeprefix(prefix) for c, owned in members.items() if home in owned), "")
            exclusive.append({"connection": name, "kind": kind, "home_partition": home, "worker": owner})
    return {
        "mode": BudgetMode(mode).value,
        "partitions": total,
        "connections": rows,
        "shares": shares,
        "exclusive": exclusive,
    }
