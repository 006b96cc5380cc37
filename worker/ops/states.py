"""The latest state of every request, read from the compacted export.jobs topic, and
the filters ``jobs list`` and ``replay`` apply to jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.codec import Codec
from worker.config import Settings
from worker.engine.model import JobState, Status
from worker.errors import DecodeError
from worker.ops.errors import UsageError
from worker.ops.kafkaio import Cluster, RangeReader
from worker.records import state_from_record
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
    """Read export.jobs to its end (read_committed), keeping the latest value per key."""
    topic = settings.topics.jobs
    latest: dict[bytes, bytes] = {}
    async with RangeReader(settings, topic, await cluster.whole(topic), batch=10_000) as reader:
        while not reader.exhausted:
            batch = await reader.next_batch()
            for msg in batch:
                key, value = msg.key(), msg.value()
                if key is None:
                    continue
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = value
            if on_batch is not None and batch:
                on_batch(len(batch))
    states: dict[str, JobState] = {}
    bad = 0
    for key, value in latest.items():
        state = await decode_state(codec, value)
        if state is None:
            bad += 1
        else:
            states[key.decode("utf-8", "replace")] = state
    return StateSnapshot(states, bad)


async def decode_state(codec: Codec, value: bytes) -> JobState | None:
    try:
        return state_from_record(await codec.decode_async("JobState", value))
    except (DecodeError, KeyError, ValueError):
        return None
