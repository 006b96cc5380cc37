"""One job of each exclusive kind of each connection at the vendor at a time, in the home
partition where all of them live (``worker.exclusive``); the others wait in request
order. Nothing here is persisted: who holds a kind is read back from the jobs' own
states (a job of that kind that is submitting or at the vendor), so a restore or a
takeover finds it again."""

from __future__ import annotations

from collections.abc import Mapping

from worker.engine.model import JobState, Phase
from worker.exclusive import exclusive_kind_of
from worker.runtime.connections import Connection
from worker.runtime.partitions import OwnedPartition

Key = tuple[int, str, str]  # (partition, connection, kind)
_STARTED = (Phase.SUBMITTING, Phase.ACTIVE)


class ExclusiveGate:
    def __init__(self, connections: Mapping[str, Connection]) -> None:
        self._connections = connections
        self._holders: dict[Key, str] = {}
        self._known: set[Key] = set()  # keys whose holder was looked up in the partition's states
        self._waiting: dict[Key, dict[str, int]] = {}  # request id -> requested at (bounded by open jobs)

    def key_of(self, number: int, state: JobState) -> Key | None:
        conn = self._connections.get(state.connection)
        kind = (
            None if conn is None else exclusive_kind_of(conn.config.vendor, conn.config.exclusive_kinds, state.job_json)
        )
        return None if kind is None else (number, state.connection, kind)

    def admit(self, part: OwnedPartition, request_id: str) -> bool:
        """Whether this due job may go on to submit now; if not, it waits for its kind."""
        state = part.jobs.get(request_id)
        key = None if state is None else self.key_of(part.number, state)
        if key is None or state is None:
            return True
        holder = self._holder(part, key)
        if holder is None or holder == request_id:
            self._holders[key] = request_id
            self._waiting.get(key, {}).pop(request_id, None)
            return True
        self._waiting.setdefault(key, {})[request_id] = state.requested_at_ms
        return False

    def ended(self, part: OwnedPartition, request_id: str, before: JobState) -> str | None:
        """A job ended: if it held its kind, the earliest waiting job that is still due
        to submit (its request id), which the caller makes due now."""
        key = self.key_of(part.number, before)
        if key is None or self._holders.get(key) != request_id:
            return None
        del self._holders[key]
        waiting = self._waiting.get(key, {})
        while waiting:
            candidate = min(waiting, key=lambda rid: (waiting[rid], rid))  # request order
            del waiting[candidate]
            state = part.jobs.get(candidate)
            if state is not None and state.phase is Phase.PENDING:
                return candidate
        return None

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def forget(self, numbers: set[int]) -> None:
        for store in (self._holders, self._waiting):
            for key in [k for k in store if k[0] in numbers]:
                del store[key]
        self._known = {k for k in self._known if k[0] not in numbers}

    def _holder(self, part: OwnedPartition, key: Key) -> str | None:
        if key not in self._known:  # first look since the partition was (re)claimed
            self._known.add(key)
            for request_id, state in part.jobs.items():
                if state.phase in _STARTED and self.key_of(part.number, state) == key:
                    self._holders[key] = request_id
                    break
        holder = self._holders.get(key)
        if holder is not None:
            state = part.jobs.get(holder)
            if state is None or state.phase is Phase.DONE:
                del self._holders[key]  # ended without telling (evicted, dropped)
                return None
        return holder
