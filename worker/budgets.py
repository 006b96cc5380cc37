"""A connection's budget shared by a fleet of workers (pure, no I/O).

A vendor sees one account, not one process: a connection's ``rate_per_s`` and
``max_concurrency`` are the fleet's. Each worker takes the part of them that matches the
part of ``export.requests`` it owns (its open work lives in those partitions), and
recomputes it at every rebalance. A worker that owns at least one partition always gets
at least one call slot, so a fleet with more workers than ``max_concurrency`` can go over
the configured concurrency by at most one call per worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class BudgetMode(StrEnum):
    FLEET = "fleet"  # the configured numbers are the fleet's, shared by ownership
    PROCESS = "process"  # every process may use the configured numbers in full (the old way)


@dataclass(frozen=True, slots=True)
class Ownership:
    """How many partitions of ``export.requests`` this worker owns, of how many."""

    owned: int
    total: int

    @property
    def fraction(self) -> float:
        """Its share: ``owned / total``, counted as one partition while it owns none (a
        worker between rebalances still finishes the calls it started)."""
        if self.total <= 0:
            return 1.0
        return min(1.0, max(1, self.owned) / self.total)


@dataclass(frozen=True, slots=True)
class Share:
    rate_per_s: float
    max_concurrency: int


def share_of(rate_per_s: float, max_concurrency: int, ownership: Ownership, mode: BudgetMode) -> Share:
    """This worker's part of a connection's fleet-wide rate and concurrency."""
    if mode is BudgetMode.PROCESS:
        return Share(rate_per_s, max_concurrency)
    fraction = ownership.fraction
    return Share(rate_per_s * fraction, max(1, math.floor(max_concurrency * fraction + 1e-9)))


class FleetBlocks:
    """The latest block of each connection this worker knows of (its own and the fleet's,
    epoch ms), so that a 429 is told to the fleet only when it ends a block later than
    the fleet already knows by at least ``min_extension_ms``: a storm of 429s writes a
    handful of control records, not one each."""

    def __init__(self, min_extension_ms: int = 1_000) -> None:
        self.min_extension_ms = min_extension_ms
        self._until: dict[str, int] = {}

    def learn(self, connection: str, until_ms: int) -> None:
        self._until[connection] = max(self._until.get(connection, 0), until_ms)

    def worth_telling(self, connection: str, until_ms: int) -> bool:
        """Whether this block should be published; if so it counts as known from now."""
        if until_ms < self._until.get(connection, 0) + self.min_extension_ms:
            return False
        self._until[connection] = until_ms
        return True


# Adaptive concurrency: halve on a 429, shrink a little when latency climbs, and grow by
# one call per ``limit`` good answers (AIMD, as TCP and Netflix's concurrency-limits do).
BACKOFF_FACTOR = 0.5
LATENCY_BACKOFF_FACTOR = 0.9
LATENCY_GROWTH = 2.0  # short-term latency above this multiple of the long-term one: back off
COOLDOWN_S = 1.0  # at most one decrease per second: one burst of 429s is one signal
SHORT_ALPHA, LONG_ALPHA = 0.1, 0.01


class AdaptiveLimit:
    """How many calls a connection may have in flight, between 1 and ``ceiling`` (this
    worker's share of ``max_concurrency``)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self._short = 0.0  # latency EWMAs (seconds); 0 until the first answer
        self._long = 0.0
        self._decreased_at = -math.inf

    @property
    def calls(self) -> int:
        return max(1, min(self.ceiling, math.floor(self.limit)))

    def set_ceiling(self, ceiling: int) -> None:
        """A new share: the limit keeps its place relative to the ceiling (at the old
        ceiling, it is at the new one; halved by 429s, it stays half of the new one)."""
        ceiling = max(1, ceiling)
        self.limit = max(1.0, min(float(ceiling), self.limit * ceiling / self.ceiling))
        self.ceiling = ceiling

    def answered(self, now: float, latency_s: float, *, rate_limited: bool) -> None:
        if rate_limited:
            self._decrease(now, BACKOFF_FACTOR)
            return
        if not math.isfinite(latency_s) or latency_s < 0:
            return
        if self._long == 0.0:
            self._short = self._long = latency_s
        else:
            self._short += SHORT_ALPHA * (latency_s - self._short)
            self._long += LONG_ALPHA * (latency_s - self._long)
        if self._short > LATENCY_GROWTH * self._long and self._decrease(now, LATENCY_BACKOFF_FACTOR):
            return
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def _decrease(self, now: float, factor: float) -> bool:
        if now - self._decreased_at < COOLDOWN_S:
            return False
        self._decreased_at = now
        self.limit = max(1.0, self.limit * factor)
        return True
