"""When each open job is due, and whether its connection may take a call now.

One heap for all jobs of a process: an entry is ``(due_ms, partition, request_id)``,
the due time being the job's own ``next_action_at_ms`` object (no int of its own).
Entries are never removed when a job's time changes; a popped entry whose time no
longer equals the job's ``next_action_at_ms`` is simply stale and skipped. That keeps
10,000s of open jobs at one small tuple each and O(log n) per timer. Jobs due in the
same millisecond come out by partition and id.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, due_ms: int, partition: int, request_id: str) -> None:
        heapq.heappush(self._heap, (due_ms, partition, request_id))

    def schedule_many(self, entries: list[tuple[int, int, str]]) -> None:
        """Schedule (due ms, partition, request id) entries at once: a takeover's."""
        heap = self._heap
        if len(entries) * 8 < len(heap):
            for entry in entries:
                heapq.heappush(heap, entry)
            return
        heap.extend(entries)
        heapq.heapify(heap)  # O(all), in C: cheaper than a push per entry

    def next_due_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int, limit: int) -> list[tuple[int, int, str]]:
        """Up to ``limit`` entries due at ``now_ms`` as (due_ms, partition, request_id)."""
        out: list[tuple[int, int, str]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            out.append(heapq.heappop(heap))
        return out

    def compact(self, keep: set[int]) -> None:
        """Drop entries of partitions no longer owned."""
        self._heap = [e for e in self._heap if e[1] in keep]
        heapq.heapify(self._heap)


@dataclass
class Limiter:
    """Per-connection capacity: a concurrency cap, a token-bucket rate, a block after a
    429 (``Retry-After`` honoured for every job of the connection) and pause/drain.

    Times are monotonic seconds supplied by the caller.
    """

    max_concurrency: int
    rate_per_s: float
    burst: float = 0.0
    in_flight: int = 0
    paused: bool = False
    blocked_until: float = 0.0
    _tokens: float = field(default=-1.0, repr=False)
    _updated: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.burst <= 0:
            self.burst = max(1.0, self.rate_per_s)
        self._tokens = self.burst

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
            self._updated = now

    def try_acquire(self, now: float) -> bool:
        if self.in_flight >= self.max_concurrency or now < self.blocked_until:
            return False
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def seconds_to_token(self, now: float) -> float:
        """How long until the bucket holds a whole token again (0 if it does now)."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)

    def resize(self, now: float, max_concurrency: int, rate_per_s: float) -> None:
        """A new concurrency cap and rate (a rebalance changed this worker's share). Calls
        in flight keep their slots; tokens saved up never exceed the new burst."""
        self._refill(now)
        self.max_concurrency = max_concurrency
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s)
        self._tokens = min(self._tokens, self.burst)

    def block(self, now: float, seconds: float) -> None:
        """No call before ``now + seconds``; a delay that is not finite and positive blocks nothing."""
        if not 0 < seconds < math.inf:  # also refuses nan
            return
        self.blocked_until = max(self.blocked_until, now + seconds)
