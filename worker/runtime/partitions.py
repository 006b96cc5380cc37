"""Which request partitions this worker owns, and the jobs of each.

Every time a partition is (re)claimed, on assignment or after a resync, it gets a new
*incarnation* number. Work started for one incarnation (a vendor call, a restore, a
batch being written) is applied only if that incarnation is still the current one:
``Partitions.current(number, incarnation)`` is the one test for it.

A partition rebuilt by its own worker (a resync) remembers the incarnations it replaced
(``rebuilt``): a vendor call of one of those that ends after the rebuild still has an
answer that only this worker ever sees (a submit's job id), so it is applied to the
state read back instead of being dropped.

Each partition's jobs are a ``JobTable`` (``worker.runtime.job_table``): it counts the
open jobs as they change and holds restored open jobs undecoded until they are needed.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from worker.engine.model import Phase
from worker.runtime.job_table import JobTable

# Rebuilds remembered per partition: calls outlive a resync by at most the vendor timeout,
# and a partition rebuilt more often than this meanwhile is failing for other reasons.
REMEMBERED_REBUILDS = 8


@dataclass
class OwnedPartition:
    number: int
    incarnation: int
    jobs: JobTable = field(default_factory=JobTable)
    ready: bool = False  # restored: requests are read and jobs are run
    revoking: bool = False  # being handed over: no new vendor calls
    # The input offset to commit: one past the last request fully processed (not the
    # consumer's position, which moves as soon as a batch is handed over).
    next_offset: int | None = None
    # Where the consumer was rewound to by a resync; messages fetched before it are re-read from here.
    resume_at: int | None = None

    @property
    def active(self) -> bool:
        """Restored and not being handed over: its due jobs may call their vendor."""
        return self.ready and not self.revoking


class Partitions(Mapping[int, OwnedPartition]):
    """The owned partitions by number (a read-only mapping), and their incarnations."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._owned: dict[int, OwnedPartition] = {}
        self._incarnation = 0
        self._replaced: dict[int, deque[int]] = {}  # by number: incarnations rebuilt by this worker

    def __getitem__(self, number: int) -> OwnedPartition:
        return self._owned[number]

    def __iter__(self) -> Iterator[int]:
        return iter(self._owned)

    def __len__(self) -> int:
        return len(self._owned)

    # Looked up for every request, timer and answer: skip Mapping's generic versions.
    def get(self, number: int, default: OwnedPartition | None = None) -> OwnedPartition | None:  # type: ignore[override]
        return self._owned.get(number, default)

    def __contains__(self, number: object) -> bool:
        return number in self._owned

    def claim(self, numbers: set[int], resume_at: dict[int, int] | None = None) -> dict[int, int]:
        """Own these partitions afresh (empty, not ready); returns their new incarnations."""
        incarnations = {}
        for n in numbers:
            self._incarnation += 1
            if n in self._owned:  # rebuilt here, not taken over: its late answers stay ours
                replaced = self._replaced.setdefault(n, deque(maxlen=REMEMBERED_REBUILDS))
                replaced.append(self._owned[n].incarnation)
            self._owned[n] = OwnedPartition(n, self._incarnation, resume_at=(resume_at or {}).get(n))
            incarnations[n] = self._incarnation
        return incarnations

    def current(self, number: int, incarnation: int | None) -> OwnedPartition | None:
        """The partition if it is still owned in this incarnation, else None (it moved to
        another worker or was rebuilt since: its new owner redoes the work)."""
        part = self._owned.get(number)
        if part is None or part.incarnation != incarnation:
            return None
        return part

    def rebuilt(self, number: int, incarnation: int) -> OwnedPartition | None:
        """The partition if ``incarnation`` is one this worker rebuilt it from (recently:
        the last ``REMEMBERED_REBUILDS``), else None."""
        part = self._owned.get(number)
        if part is None or incarnation not in self._replaced.get(number, ()):
            return None
        return part

    def incarnations(self) -> dict[int, int]:
        return {n: p.incarnation for n, p in self._owned.items()}

    def start_revoking(self, numbers: set[int]) -> None:
        for n in numbers:
            if n in self._owned:
                self._owned[n].revoking = True

    def drop(self, numbers: set[int]) -> None:
        for n in numbers:
            self._owned.pop(n, None)
            self._replaced.pop(n, None)

    def positions(self) -> list[TopicPartition]:
        """The input offsets to commit: what was fully processed on each ready partition."""
        return [
            TopicPartition(self.topic, n, p.next_offset)
            for n, p in self._owned.items()
            if p.ready and p.next_offset is not None
        ]

    def restoring(self) -> list[int]:
        return sorted(n for n, p in self._owned.items() if not p.ready)

    def ready_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, n) for n, p in self._owned.items() if p.ready]

    def open_jobs(self) -> int:
        """Open jobs of every owned partition (ready or not), in O(partitions)."""
        return sum(part.jobs.open_count for part in self._owned.values())

    def open_job_counts(self) -> dict[tuple[str, str], int]:
        """Open jobs by (vendor, status), for the open-jobs gauge (collected by the /metrics
        handler, on the loop), parked ones included without decoding them."""
        tally: Counter[tuple[str, str]] = Counter()
        for part in list(self._owned.values()):
            if not part.jobs.open_count:
                continue  # nothing open: no need to look at its finished jobs
            for state in list(dict.values(part.jobs)):  # not JobTable's: that decodes parked jobs
                if state.phase is not Phase.DONE:
                    tally[(state.vendor, state.status.value)] += 1
            for key, count in part.jobs.parked_counts():
                tally[key] += count
        return dict(tally)
