"""The latest state of every request, read from the compacted export.jobs topic, and
the filters ``jobs list`` and ``replay`` apply to jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from worker.codec import Codec
from worker.config import Settings
from worker.engine.model import JobState, Status
from worker.kafka import read_compacted
from worker.ops.errors import UsageError
from worker.ops.kafkaio import Cluster, client_config
from worker.records import decode_states
from worker.vendor_registry import VENDORS

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class JobFilters:
    """Which jobs ``jobs list`` shows; None matches anything. ``statuses`` and
    ``vendors`` match any of their members."""

    vendors: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    tenant: str | None = None
    connection: str | None = None
    since_ms: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        vendor: str | None = None,
        status: str | None = None,
        tenant: str | None = None,
        connection: str | None = None,
        since_ms: int | None = None,
    ) -> JobFilters:
        """From comma-separated flag values; UsageError for unknown vendors or statuses."""
        vendors = _members(vendor, VENDORS, "--vendor", lower=True)
        statuses = _members(status, tuple(s.value for s in Status), "--status", lower=False)
        return cls(vendors, statuses, tenant, connection, since_ms)

    def match(self, state: JobState) -> bool:
        return (
            (self.vendors is None or state.vendor in self.vendors)
            and (self.statuses is None or state.status.value in self.statuses)
            and (self.tenant is None or state.tenant == self.tenant)
            and (self.connection is None or state.connection == self.connection)
            and (self.since_ms is None or state.updated_at_ms >= self.since_ms)
        )


def _members(text: str | None, allowed: tuple[str, ...], flag: str, *, lower: bool) -> frozenset[str] | None:
    if text is None:
        return None
    values = {v.strip().lower() if lower else v.strip().upper() for v in text.split(",") if v.strip()}
    unknown = sorted(values - set(allowed))
    if unknown or not values:
        raise UsageError(f"{flag} {text!r}: unknown {', '.join(unknown) or 'value'}; one of {', '.join(allowed)}")
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """The latest state of every request in export.jobs (tombstoned ones removed)."""

    states: dict[str, JobState]
    undecodable: int = 0


async def load_states(
    settings: Settings, cluster: Cluster, codec: Codec, *, on_batch: Progress | None = None
) -> StateSnapshot:
    """Read export.jobs to its end (read_committed), keeping the latest value per key.

    The end is each partition's last stable offset when the read begins. Unlike a
    worker's restore, this does not wait for open transactions to end (workers commit
    all the time, and a dead one's transaction holds the end back for up to the
    transaction timeout): an operator sees what is committed now, at once."""
    topic = settings.topics.jobs
    numbers = list(range(await cluster.partitions(topic)))
    starts, ends = await asyncio.gather(cluster.beginnings(topic, numbers), cluster.ends(topic, numbers))
    client = {**client_config(settings), "group.id": f"{settings.group_id}.ops"}
    parts = await read_compacted(client, topic, numbers, starts=starts, ends=ends, on_progress=on_batch)
    decoded = await decode_states(codec, {k: v for part in parts for k, v in part.values.items()})
    return StateSnapshot(decoded.states, len(decoded.unreadable))
