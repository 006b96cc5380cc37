"""A partition's jobs by request id: the ``JobTable``.

It keeps the number of open jobs (``phase`` not DONE) as states are set, replaced and
removed, so the intake gate (``worker.runtime.backpressure``) reads the total in
O(partitions) every turn instead of scanning every job.

It also holds *parked* jobs: open jobs a restore read back but did not decode (design
state-store §3.8). A takeover needs of a polling job only when it is due, which the
store's peek gives; decoding every open job at once (≈ 25 µs each, plus cutting its body
down) made a takeover of 100,000 open jobs take seconds before the first poll. A parked
job is its raw ``export.jobs`` value; the first look at it (a timer, an answer, a
duplicate request, an iteration) decodes it with the table's ``unpark`` function and it
is an ordinary entry from then on. Only jobs whose restore step would not change them are
parked (ACTIVE, next poll in the future), so decoding later gives the same state as
decoding at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NoReturn

from worker.engine.model import JobState, Phase

_DONE = Phase.DONE
_ABSENT: Any = object()


# An open job restored without decoding it, by request id: (its committed export.jobs
# value, next_action_at_ms, vendor, status). Vendor and status feed the open-jobs gauge,
# which must not decode. A plain tuple: a takeover builds one per open job.
Parked = tuple[bytes, int, str, str]
parked_due = itemgetter(1)  # a Parked's next_action_at_ms


@dataclass(slots=True)
class OpenJobs:
    """A restored partition's open jobs, as the restore hands them to the loop."""

    states: list[JobState]  # decoded (the restore step may change them)
    parked: dict[str, Parked] = field(default_factory=dict)


# Decodes a parked job's value into the state memory keeps (None: unreadable, logged and
# dropped, as a restore drops an unreadable state).
Unpark = Callable[[str, bytes], JobState | None]


def _unset(request_id: str, value: bytes) -> JobState | None:
    raise RuntimeError(f"parked job {request_id} but no unpark function")


class JobTable(dict[str, JobState]):
    """A partition's jobs by request id, counting the open ones. Job states are
    immutable, so every change of phase is a ``__setitem__``; every mutating dict method
    keeps the count (``fromkeys``, which would make entries without states, raises).

    Looking a job up (``[]``, ``get``, ``in``) sees parked jobs, decoding one on first
    access; iterating decodes them all first. ``len`` counts them without decoding."""

    __slots__ = ("_parked", "_parked_tally", "_unpark", "open_count")

    def __init__(self, jobs: Mapping[str, JobState] | Iterable[tuple[str, JobState]] = (), /) -> None:
        super().__init__()
        self.open_count = 0
        self._parked: dict[str, Parked] = {}
        self._parked_tally: Counter[tuple[str, str]] = Counter()
        self._unpark: Unpark = _unset
        self.update(jobs)

    # ---- parked jobs ---------------------------------------------------------------

    def park(self, jobs: Mapping[str, Parked], unpark: Unpark) -> int:
        """Hold these open jobs undecoded (replacing any entry of the same id); returns
        how many. ``unpark`` decodes one when it is first needed."""
        self._unpark = unpark
        if dict.__len__(self) or self._parked:
            for request_id in jobs:
                self._drop(request_id)
        self._parked.update(jobs)
        self._parked_tally.update((vendor, status) for _value, _due, vendor, status in jobs.values())
        self.open_count += len(jobs)
        return len(jobs)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def parked_counts(self) -> list[tuple[tuple[str, str], int]]:
        """Parked jobs by (vendor, status), for the open-jobs gauge."""
        return list(self._parked_tally.items())

    def unpark_all(self) -> None:
        for request_id in list(self._parked):
            self._take(request_id)

    def _take(self, request_id: str) -> JobState | None:
        """Decode one parked job into an ordinary entry (None: it was unreadable)."""
        job = self._parked[request_id]
        state = self._unpark(request_id, job[0])  # if it raises, the job stays parked
        del self._parked[request_id]
        self._untally(job)
        if state is None:
            self.open_count -= 1
            return None
        dict.__setitem__(self, request_id, state)
        if state.phase is _DONE:  # the peek said open: cannot happen, but keep the count true
            self.open_count -= 1
        return state

    def _untally(self, job: Parked) -> None:
        key = (job[2], job[3])
        left = self._parked_tally[key] - 1
        if left:
            self._parked_tally[key] = left
        else:
            del self._parked_tally[key]

    def _drop(self, request_id: str) -> None:
        """Forget ``request_id`` (parked or not), keeping the count."""
        job = self._parked.pop(request_id, None)
        if job is not None:
            self._untally(job)
            self.open_count -= 1
        old = dict.pop(self, request_id, None)
        if old is not None and old.phase is not _DONE:
            self.open_count -= 1

    # ---- lookups ---------------------------------------------------------------------

    def get(self, request_id: str, default: Any = None) -> Any:  # type: ignore[override]
        state = dict.get(self, request_id)
        if state is None and request_id in self._parked:
            state = self._take(request_id)
        return default if state is None else state

    def __missing__(self, request_id: str) -> JobState:
        if request_id in self._parked:
            state = self._take(request_id)
            if state is not None:
                return state
        raise KeyError(request_id)

    def __contains__(self, request_id: object) -> bool:
        return dict.__contains__(self, request_id) or request_id in self._parked

    def __len__(self) -> int:
        return dict.__len__(self) + len(self._parked)

    def __iter__(self) -> Iterator[str]:
        self.unpark_all()
        return dict.__iter__(self)

    def keys(self) -> Any:
        self.unpark_all()
        return dict.keys(self)

    def values(self) -> Any:
        self.unpark_all()
        return dict.values(self)

    def items(self) -> Any:
        self.unpark_all()
        return dict.items(self)

    def __eq__(self, other: object) -> bool:
        self.unpark_all()
        if isinstance(other, JobTable):
            other.unpark_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __reversed__(self) -> Iterator[str]:
        self.unpark_all()
        return dict.__reversed__(self)

    def __repr__(self) -> str:
        return f"JobTable({dict.__repr__(self)}, parked={len(self._parked)})"

    __hash__ = None  # type: ignore[assignment]

    # ---- changes ---------------------------------------------------------------------

    def __setitem__(self, request_id: str, state: JobState) -> None:
        if self._parked:
            job = self._parked.pop(request_id, None)
            if job is not None:  # replaced before anyone looked at it
                self._untally(job)
                self.open_count -= 1
        old = dict.get(self, request_id)
        dict.__setitem__(self, request_id, state)
        if state.phase is not _DONE:
            self.open_count += 1
        if old is not None and old.phase is not _DONE:
            self.open_count -= 1

    def __delitem__(self, request_id: str) -> None:
        if request_id not in self:
            raise KeyError(request_id)
        self._drop(request_id)

    def pop(self, request_id: str, default: Any = _ABSENT) -> Any:
        old = self.get(request_id, _ABSENT)
        if old is _ABSENT:
            if default is _ABSENT:
                raise KeyError(request_id)
            return default
        self._drop(request_id)
        return old

    def popitem(self) -> tuple[str, JobState]:
        self.unpark_all()
        request_id, old = dict.popitem(self)
        if old.phase is not _DONE:
            self.open_count -= 1
        return request_id, old

    def clear(self) -> None:
        dict.clear(self)
        self._parked.clear()
        self._parked_tally.clear()
        self.open_count = 0

    def setdefault(self, request_id: str, default: JobState) -> JobState:  # type: ignore[override]
        found: JobState | None = self.get(request_id)
        if found is None:
            self[request_id] = found = default
        return found

    def update(self, *others: Any, **more: JobState) -> None:
        for other in others:
            items = other.items() if hasattr(other, "items") else other
            for request_id, state in items:
                self[request_id] = state
        for request_id, state in more.items():
            self[request_id] = state

    def __ior__(self, other: Any) -> JobTable:  # type: ignore[override,misc]
        self.update(other)
        return self

    @classmethod
    def fromkeys(cls, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("JobTable.fromkeys: a job table holds job states, not placeholders")

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle rebuild it through __init__, which counts afresh
        # (the default would restore the count and then add every entry again).
        return (type(self), (dict(self.items()),))

    def recount(self) -> int:
        """The open jobs counted one by one (tests and invariant checks: O(jobs))."""
        return sum(1 for state in self.values() if state.phase is not _DONE)
