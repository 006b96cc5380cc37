"""The job table's open count: whatever is done to a partition's jobs, ``open_count``
equals a recount, and ``Partitions.open_jobs`` is their sum over owned partitions."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.runtime_fakes import NOW_MS_INT, accepted
from worker.engine.model import JobState, Phase
from worker.runtime.job_table import JobTable, Parked
from worker.runtime.partitions import Partitions

BASE = accepted("base", NOW_MS_INT)
STATES = {phase: BASE.evolve(phase=phase) for phase in Phase}


def state(phase: Phase) -> JobState:
    return STATES[phase]


keys = st.sampled_from(["a", "b", "c", "d", "e"])
phases = st.sampled_from(list(Phase))
pairs = st.lists(st.tuples(keys, phases), max_size=4)
operations = st.one_of(
    st.tuples(st.just("set"), keys, phases),
    st.tuples(st.just("pop"), keys),
    st.tuples(st.just("pop_default"), keys),
    st.tuples(st.just("del"), keys),
    st.tuples(st.just("popitem")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("setdefault"), keys, phases),
    st.tuples(st.just("update"), pairs),
    st.tuples(st.just("ior"), pairs),
    st.tuples(st.just("park"), st.lists(keys, max_size=3, unique=True)),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("index"), keys),
)
PARKED_STATUS = STATES[Phase.ACTIVE].status.value


def unpark(request_id: str, value: bytes) -> JobState | None:
    """The tests' decoder: a parked value names the phase of the state it holds."""
    return None if value == b"unreadable" else STATES[Phase[value.decode()]]


def parked(*request_ids: str, value: bytes = b"ACTIVE") -> dict[str, Parked]:
    return {request_id: (value, 1, "itron", PARKED_STATUS) for request_id in request_ids}


def apply(table: JobTable, model: dict[str, Phase], op: tuple[Any, ...]) -> None:
    """Do ``op`` to the table and to a plain dict of phases (the model), alike."""
    name = op[0]
    if name == "set":
        table[op[1]] = state(op[2])
        model[op[1]] = op[2]
    elif name == "pop":
        if op[1] in model:
            assert table.pop(op[1]).phase is model.pop(op[1])
        else:
            with pytest.raises(KeyError):
                table.pop(op[1])
    elif name == "pop_default":
        assert table.pop(op[1], None) is (STATES[model.pop(op[1])] if op[1] in model else None)
    elif name == "del":
        if op[1] in model:
            del table[op[1]]
            del model[op[1]]
        else:
            with pytest.raises(KeyError):
                del table[op[1]]
    elif name == "popitem":
        if model:
            key, popped = table.popitem()
            assert popped.phase is model.pop(key)
        else:
            with pytest.raises(KeyError):
                table.popitem()
    elif name == "clear":
        table.clear()
        model.clear()
    elif name == "setdefault":
        got = table.setdefault(op[1], state(op[2]))
        assert got.phase is model.setdefault(op[1], op[2])
    elif name == "update":
        table.update([(k, state(p)) for k, p in op[1]])
        model.update(op[1])
    elif name == "ior":
        table |= {k: state(p) for k, p in op[1]}
        model.update(op[1])
    elif name == "park":
        table.park(parked(*op[1]), unpark)
        model.update(dict.fromkeys(op[1], Phase.ACTIVE))
    elif name == "get":
        found = table.get(op[1])
        assert (found and found.phase) is model.get(op[1])
    elif name == "index":
        if op[1] in model:
            assert table[op[1]].phase is model[op[1]]
        else:
            with pytest.raises(KeyError):
                table[op[1]]


class TestJobTable:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(operations, max_size=40))
    def test_the_open_count_equals_a_recount_after_any_sequence_of_changes(self, ops: list[tuple[Any, ...]]) -> None:
        table = JobTable()
        model: dict[str, Phase] = {}
        for op in ops:
            apply(table, model, op)
            # Checked without iterating, which would decode every parked job.
            assert table.open_count == sum(p is not Phase.DONE for p in model.values())
            assert len(table) == len(model)
            assert all((k in table) == (k in model) for k in "abcde")
        assert table.open_count == table.recount()
        assert {k: s.phase for k, s in table.items()} == model
        assert table.parked == 0 and table.parked_counts() == []

    def test_a_parked_job_is_decoded_once_on_first_look_and_counted_meanwhile(self) -> None:
        decoded: list[str] = []

        def counting(request_id: str, value: bytes) -> JobState | None:
            decoded.append(request_id)
            return unpark(request_id, value)

        table = JobTable({"done": state(Phase.DONE)})
        assert table.park(parked("a", "b"), counting) == 2
        assert (table.open_count, table.parked, len(table)) == (2, 2, 3)
        assert table.parked_counts() == [(("itron", PARKED_STATUS), 2)]
        assert "a" in table and decoded == []  # membership does not decode
        assert table.get("a") is STATES[Phase.ACTIVE] and table["a"] is STATES[Phase.ACTIVE]
        assert decoded == ["a"] and table.parked == 1
        assert table.parked_counts() == [(("itron", PARKED_STATUS), 1)]
        table["b"] = state(Phase.DONE)  # replaced before anyone looked: never decoded
        assert decoded == ["a"] and table.open_count == 1 and table.parked_counts() == []

    def test_an_unreadable_parked_job_goes_on_first_look(self) -> None:
        table = JobTable()
        table.park(parked("bad", value=b"unreadable") | parked("ok"), unpark)
        assert table.open_count == 2
        assert table.get("bad") is None and "bad" not in table
        with pytest.raises(KeyError):
            table["bad"]
        assert table.open_count == 1 and len(table) == 1

    def test_a_failing_decode_leaves_the_job_parked_and_counted(self) -> None:
        def broken(request_id: str, value: bytes) -> JobState | None:
            raise RuntimeError("a bug in the decoder")

        table = JobTable()
        table.park(parked("a"), broken)
        with pytest.raises(RuntimeError):
            table.get("a")
        assert (table.parked, table.open_count, "a" in table) == (1, 1, True)

    def test_comparisons_and_repr_see_parked_jobs(self) -> None:
        table, other = JobTable(), JobTable()
        table.park(parked("a"), unpark)
        other.park(parked("a"), unpark)
        assert repr(table) == "JobTable({}, parked=1)"
        assert table == other
        assert (table != other) is False  # dict.__ne__ would ignore the parked jobs
        assert table != {} and list(reversed(table)) == ["a"]

    def test_iterating_decodes_every_parked_job(self) -> None:
        table = JobTable()
        table.park(parked("a") | parked("b", value=b"PENDING"), unpark)
        assert sorted((k, s.phase) for k, s in table.items()) == [("a", Phase.ACTIVE), ("b", Phase.PENDING)]
        assert table.parked == 0 and table.open_count == table.recount() == 2

    def test_a_job_counts_while_open_and_stops_when_it_finishes(self) -> None:
        table = JobTable()
        table["j"] = state(Phase.PENDING)
        table["j"] = state(Phase.SUBMITTING)
        table["j"] = state(Phase.ACTIVE)
        assert table.open_count == 1
        table["j"] = state(Phase.DONE)
        assert table.open_count == 0
        table["j"] = state(Phase.ACTIVE)  # an operator's replay reopens it
        assert table.open_count == 1

    def test_built_from_a_mapping_it_counts_its_open_jobs(self) -> None:
        table = JobTable({"a": state(Phase.ACTIVE), "b": state(Phase.DONE), "c": state(Phase.PENDING)})
        assert table.open_count == 2
        assert table == {"a": state(Phase.ACTIVE), "b": state(Phase.DONE), "c": state(Phase.PENDING)}
        assert JobTable() == {}

    def test_copies_and_pickles_count_afresh(self) -> None:
        table = JobTable({"a": state(Phase.ACTIVE), "b": state(Phase.DONE)})
        for other in (copy.copy(table), copy.deepcopy(table), pickle.loads(pickle.dumps(table))):
            assert isinstance(other, JobTable)
            assert other.open_count == 1 and other == table

    def test_fromkeys_is_refused(self) -> None:
        with pytest.raises(TypeError):
            JobTable.fromkeys(["a"])


class TestOpenJobs:
    def test_the_sum_over_owned_partitions_and_a_dropped_partition_stops_counting(self) -> None:
        parts = Partitions("requests")
        parts.claim({0, 1, 2})
        parts[0].jobs["a"] = state(Phase.ACTIVE)
        parts[0].jobs["b"] = state(Phase.DONE)
        parts[1].jobs["c"] = state(Phase.PENDING)
        parts[1].jobs["d"] = state(Phase.SUBMITTING)
        assert parts.open_jobs() == 3
        parts.drop({1})
        assert parts.open_jobs() == 1
        parts.claim({0})  # rebuilt (a resync): its jobs come back with the restore
        assert parts.open_jobs() == 0

    def test_the_gauge_by_vendor_and_status_still_counts_only_open_jobs(self) -> None:
        parts = Partitions("requests")
        parts.claim({0, 1})
        running = accepted("r", NOW_MS_INT).evolve(phase=Phase.ACTIVE)
        parts[0].jobs["r"] = running
        parts[0].jobs["q"] = accepted("q", NOW_MS_INT)
        parts[1].jobs["done"] = accepted("done", NOW_MS_INT).evolve(phase=Phase.DONE)
        counts = parts.open_job_counts()
        assert sum(counts.values()) == parts.open_jobs() == 2
        assert counts == {("itron", running.status.value): 2}
