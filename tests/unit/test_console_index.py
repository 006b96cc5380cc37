"""The console's SQLite index: folding topic records in, and the pages' queries
(search filters, order, paging, one job's records, counts, dead letters, control)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from worker.console.index import PAGE, ConsoleIndex, JobQuery, JobRow, JobUpdate


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ConsoleIndex]:
    ix = ConsoleIndex(tmp_path / "console" / "index.sqlite")
    yield ix
    ix.close()


def row(
    request_id: str,
    *,
    tenant: str = "acme",
    connection: str = "itron-prod",
    vendor: str = "itron",
    status: str = "RUNNING",
    phase: str = "POLLING",
    vendor_job_id: str | None = None,
    updated_at_ms: int = 1_000,
    partition: int = 0,
) -> JobRow:
    return JobRow(request_id, tenant, connection, vendor, status, phase, vendor_job_id, updated_at_ms, partition)


def update(job: JobRow, value: bytes | None = None) -> JobUpdate:
    return JobUpdate(job.request_id, job, value if value is not None else f"state:{job.request_id}".encode())


def tombstone(request_id: str) -> JobUpdate:
    return JobUpdate(request_id, None, None)


def ids(rows: list[JobRow]) -> list[str]:
    return [r.request_id for r in rows]


class Boom(Exception):
    pass


T = TypeVar("T")


def raising_after(*items: T) -> Iterator[T]:
    """An iterable that yields ``items`` and then fails (a batch that breaks mid-way)."""
    yield from items
    raise Boom("mid-batch")


# ---- folding jobs ---------------------------------------------------------------------------


class TestFoldJobs:
    def test_insert_then_search_returns_the_row(self, index: ConsoleIndex) -> None:
        job = row("r-1", vendor_job_id="v-9", updated_at_ms=42, partition=3)
        index.fold(jobs=[update(job)])
        assert index.search(JobQuery()) == [job]
        assert index.jobs_total() == 1

    def test_a_later_update_replaces_the_row(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1", status="QUEUED", updated_at_ms=1), b"v1")])
        later = row("r-1", status="SUCCEEDED", phase="DONE", updated_at_ms=2, partition=5)
        index.fold(jobs=[update(later, b"v2")])
        assert index.search(JobQuery()) == [later]
        records = index.job("r-1")
        assert records is not None and records.state == (5, b"v2")
        assert index.jobs_total() == 1

    def test_updates_within_one_batch_apply_in_order(self, index: ConsoleIndex) -> None:
        first, second = row("r-1", status="QUEUED"), row("r-1", status="FAILED")
        index.fold(jobs=[update(first, b"a"), update(second, b"b")])
        assert index.search(JobQuery()) == [second]

    def test_a_tombstone_deletes_the_job(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1")), update(row("r-2"))])
        index.fold(jobs=[tombstone("r-1")])
        assert ids(index.search(JobQuery())) == ["r-2"]
        assert index.job("r-1") is None
        assert index.jobs_total() == 1

    def test_a_row_without_a_value_is_a_tombstone_too(self, index: ConsoleIndex) -> None:
        job = row("r-1")
        index.fold(jobs=[update(job)])
        index.fold(jobs=[JobUpdate("r-1", job, None)])
        assert index.jobs_total() == 0

    def test_a_tombstone_for_an_unknown_job_is_harmless(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[tombstone("never-seen")])
        assert index.jobs_total() == 0 and index.search(JobQuery()) == []

    def test_insert_after_tombstone_brings_the_job_back(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1")), tombstone("r-1"), update(row("r-1", status="QUEUED"), b"again")])
        assert index.search(JobQuery()) == [row("r-1", status="QUEUED")]
        records = index.job("r-1")
        assert records is not None and records.state == (0, b"again")

    def test_values_are_arbitrary_bytes(self, index: ConsoleIndex) -> None:
        value = bytes(range(256)) * 3
        index.fold(jobs=[update(row("r-1", partition=7), value)])
        records = index.job("r-1")
        assert records is not None and records.state == (7, value)

    def test_an_empty_fold_changes_nothing(self, index: ConsoleIndex) -> None:
        index.fold()
        assert index.jobs_total() == 0 and index.control() == {} and index.dead_letter_counts() == {}


# ---- search -------------------------------------------------------------------------------


class TestSearchFilters:
    @pytest.fixture
    def filled(self, index: ConsoleIndex) -> ConsoleIndex:
        index.fold(
            jobs=[
                update(row("abc", tenant="t1", connection="c1", vendor="itron", status="RUNNING", updated_at_ms=100)),
                update(row("abd", tenant="t2", connection="c2", vendor="itron", status="FAILED", updated_at_ms=200)),
                update(row("b-ab", tenant="t1", connection="c2", vendor="og", status="RUNNING", updated_at_ms=300)),
                update(row("ab", tenant="t2", connection="c1", vendor="og", status="SUCCEEDED", updated_at_ms=400)),
                update(row("xyz", tenant="t3", connection="c3", vendor="og", status="FAILED", updated_at_ms=500)),
            ]
        )
        return index

    def test_no_filter_matches_everything_newest_first(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery())) == ["xyz", "ab", "b-ab", "abd", "abc"]

    def test_request_id_is_a_prefix(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(request_id="ab"))) == ["ab", "abd", "abc"]
        assert ids(filled.search(JobQuery(request_id="abc"))) == ["abc"]
        assert ids(filled.search(JobQuery(request_id="b"))) == ["b-ab"]
        assert filled.search(JobQuery(request_id="abcd")) == []
        assert filled.search(JobQuery(request_id="ac")) == []

    def test_request_id_prefix_is_not_a_substring_match(self, filled: ConsoleIndex) -> None:
        assert "b-ab" not in ids(filled.search(JobQuery(request_id="ab")))
        assert filled.search(JobQuery(request_id="-ab")) == []

    def test_request_id_prefix_with_like_wildcards_is_literal(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("a%c")), update(row("a_c")), update(row("abc"))])
        assert ids(index.search(JobQuery(request_id="a%"))) == ["a%c"]
        assert ids(index.search(JobQuery(request_id="a_"))) == ["a_c"]

    def test_request_id_prefix_with_non_ascii(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("é-1")), update(row("é-2")), update(row("e-3"))])
        assert sorted(ids(index.search(JobQuery(request_id="é")))) == ["é-1", "é-2"]

    def test_tenant(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(tenant="t1"))) == ["b-ab", "abc"]

    def test_connection(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(connection="c2"))) == ["b-ab", "abd"]

    def test_vendor(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(vendor="itron"))) == ["abd", "abc"]

    def test_status(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(status="FAILED"))) == ["xyz", "abd"]

    def test_unknown_value_matches_nothing(self, filled: ConsoleIndex) -> None:
        assert filled.search(JobQuery(tenant="nobody")) == []

    def test_empty_strings_match_anything(self, filled: ConsoleIndex) -> None:
        query = JobQuery(request_id="", tenant="", connection="", vendor="", status="")
        assert len(filled.search(query)) == 5

    def test_since_is_inclusive(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(since_ms=300))) == ["xyz", "ab", "b-ab"]

    def test_until_is_exclusive(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(until_ms=300))) == ["abd", "abc"]

    def test_since_and_until_together(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(since_ms=200, until_ms=400))) == ["b-ab", "abd"]
        assert filled.search(JobQuery(since_ms=400, until_ms=400)) == []

    def test_zero_bounds_are_bounds(self, filled: ConsoleIndex) -> None:
        assert filled.search(JobQuery(until_ms=0)) == []
        assert len(filled.search(JobQuery(since_ms=0))) == 5

    def test_filters_combine(self, filled: ConsoleIndex) -> None:
        assert ids(filled.search(JobQuery(request_id="ab", tenant="t2"))) == ["ab", "abd"]
        assert ids(filled.search(JobQuery(vendor="og", status="RUNNING", connection="c2"))) == ["b-ab"]
        assert filled.search(JobQuery(vendor="og", tenant="t1", status="FAILED")) == []


class TestSearchOrderAndPaging:
    def test_equal_times_tie_break_on_request_id_descending(self, index: ConsoleIndex) -> None:
        index.fold(
            jobs=[update(row(r, updated_at_ms=10)) for r in ("b", "a", "c")] + [update(row("z", updated_at_ms=5))]
        )
        assert ids(index.search(JobQuery())) == ["c", "b", "a", "z"]

    def test_limit_is_respected(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row(f"r-{i:03d}", updated_at_ms=i)) for i in range(10)])
        assert ids(index.search(JobQuery(limit=3))) == ["r-009", "r-008", "r-007"]

    def test_limit_is_capped_at_page(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row(f"r-{i:03d}", updated_at_ms=i)) for i in range(PAGE + 20)])
        assert len(index.search(JobQuery(limit=PAGE + 20))) == PAGE
        assert len(index.search(JobQuery(limit=10_000))) == PAGE

    def test_limit_below_one_returns_one_row(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row(f"r-{i}", updated_at_ms=i)) for i in range(3)])
        assert ids(index.search(JobQuery(limit=0))) == ["r-2"]
        assert ids(index.search(JobQuery(limit=-5))) == ["r-2"]

    def test_before_skips_the_row_shown_and_everything_newer(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row(r, updated_at_ms=t)) for r, t in (("a", 1), ("b", 2), ("c", 2), ("d", 3))])
        assert ids(index.search(JobQuery(before=(2, "c")))) == ["b", "a"]
        assert ids(index.search(JobQuery(before=(2, "b")))) == ["a"]
        assert ids(index.search(JobQuery(before=(3, "d")))) == ["c", "b", "a"]
        assert index.search(JobQuery(before=(1, "a"))) == []

    @pytest.mark.parametrize("page_size", [1, 3, 7, PAGE])
    def test_paging_visits_every_row_exactly_once(self, index: ConsoleIndex, page_size: int) -> None:
        # Many ties on updated_at_ms, so the request_id tie-break matters at page edges.
        jobs = [row(f"r-{i:04d}", updated_at_ms=1_000 + i // 4) for i in range(131)]
        index.fold(jobs=[update(j) for j in jobs])
        seen: list[str] = []
        before: tuple[int, str] | None = None
        pages = 0
        while True:
            page = index.search(JobQuery(before=before, limit=page_size))
            if not page:
                break
            assert len(page) <= page_size
            seen += ids(page)
            before = (page[-1].updated_at_ms, page[-1].request_id)
            pages += 1
        expected = ids(sorted(jobs, key=lambda j: (j.updated_at_ms, j.request_id), reverse=True))
        assert seen == expected
        assert len(set(seen)) == 131
        assert pages == -(-131 // page_size)

    def test_paging_keeps_filters(self, index: ConsoleIndex) -> None:
        index.fold(
            jobs=[update(row(f"r-{i:02d}", tenant="even" if i % 2 == 0 else "odd", updated_at_ms=i)) for i in range(20)]
        )
        first = index.search(JobQuery(tenant="even", limit=4))
        assert ids(first) == ["r-18", "r-16", "r-14", "r-12"]
        last = first[-1]
        second = index.search(JobQuery(tenant="even", limit=4, before=(last.updated_at_ms, last.request_id)))
        assert ids(second) == ["r-10", "r-08", "r-06", "r-04"]


# ---- one job --------------------------------------------------------------------------------


class TestJob:
    def test_unknown_id_is_none(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1"))])
        assert index.job("r-2") is None
        assert index.job("r") is None  # no prefix matching here

    def test_state_statuses_and_files(self, index: ConsoleIndex) -> None:
        index.fold(
            jobs=[update(row("r-1", partition=4), b"\x00state")],
            statuses=[("r-1", 2, b"s2"), ("r-1", 1, b"s1"), ("r-2", 1, b"other")],
            files=[("r-1", "0:17", b"f1"), ("r-1", "0:18", b"f2"), ("r-2", "1:1", b"other")],
        )
        records = index.job("r-1")
        assert records is not None
        assert records.state == (4, b"\x00state")
        assert records.statuses == [b"s1", b"s2"]  # by sequence
        assert records.files == [b"f1", b"f2"]

    def test_statuses_are_in_numeric_sequence_order(self, index: ConsoleIndex) -> None:
        index.fold(statuses=[("r-1", s, f"s{s}".encode()) for s in (10, 2, 1, 30, 3)])
        records = index.job("r-1")
        assert records is not None and records.statuses == [b"s1", b"s2", b"s3", b"s10", b"s30"]

    def test_a_status_sequence_seen_twice_keeps_the_latest_value(self, index: ConsoleIndex) -> None:
        index.fold(statuses=[("r-1", 1, b"old")])
        index.fold(statuses=[("r-1", 1, b"new")])
        records = index.job("r-1")
        assert records is not None and records.statuses == [b"new"]

    def test_statuses_or_files_without_state(self, index: ConsoleIndex) -> None:
        index.fold(statuses=[("r-1", 1, b"s1")], files=[("r-2", "0:1", b"f")])
        only_status = index.job("r-1")
        assert only_status is not None
        assert (only_status.state, only_status.statuses, only_status.files) == (None, [b"s1"], [])
        only_file = index.job("r-2")
        assert only_file is not None
        assert (only_file.state, only_file.statuses, only_file.files) == (None, [], [b"f"])
        assert index.jobs_total() == 0

    def test_a_tombstone_keeps_the_lineage(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1"))], statuses=[("r-1", 1, b"s1")])
        index.fold(jobs=[tombstone("r-1")])
        records = index.job("r-1")
        assert records is not None and records.state is None and records.statuses == [b"s1"]


# ---- counts ----------------------------------------------------------------------------------


class TestCounts:
    def test_open_counts_exclude_done(self, index: ConsoleIndex) -> None:
        index.fold(
            jobs=[
                update(row("r-1", vendor="itron", status="RUNNING", phase="POLLING")),
                update(row("r-2", vendor="itron", status="RUNNING", phase="SUBMITTING")),
                update(row("r-3", vendor="itron", status="QUEUED", phase="SUBMITTING")),
                update(row("r-4", vendor="og", status="RUNNING", phase="POLLING")),
                update(row("r-5", vendor="itron", status="SUCCEEDED", phase="DONE")),
                update(row("r-6", vendor="og", status="FAILED", phase="DONE")),
            ]
        )
        assert index.open_counts() == {("itron", "RUNNING"): 2, ("itron", "QUEUED"): 1, ("og", "RUNNING"): 1}
        assert index.jobs_total() == 6

    def test_a_job_reaching_done_leaves_the_open_counts(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("r-1", status="RUNNING", phase="POLLING"))])
        assert index.open_counts() == {("itron", "RUNNING"): 1}
        index.fold(jobs=[update(row("r-1", status="SUCCEEDED", phase="DONE"))])
        assert index.open_counts() == {}
        assert index.jobs_total() == 1

    def test_empty_index(self, index: ConsoleIndex) -> None:
        assert index.open_counts() == {} and index.jobs_total() == 0


# ---- dead letters -------------------------------------------------------------------------------


def letter(partition: int, offset: int, reason: str) -> tuple[int, int, str, dict[str, Any]]:
    return (partition, offset, reason, {"position": f"{partition}:{offset}", "reason_code": reason})


class TestDeadLetters:
    def test_counts_by_reason(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 1, "SCHEMA"), letter(0, 2, "SCHEMA"), letter(1, 1, "VENDOR")])
        index.fold(dead_letters=[letter(1, 2, "SCHEMA")])
        assert index.dead_letter_counts() == {"SCHEMA": 3, "VENDOR": 1}

    def test_the_same_position_twice_counts_once(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 1, "SCHEMA")])
        index.fold(dead_letters=[(0, 1, "SCHEMA", {"position": "0:1", "again": True})])
        assert index.dead_letter_counts() == {"SCHEMA": 1}
        assert index.dead_letters() == [{"position": "0:1", "again": True}]

    def test_listing_is_newest_first_and_rows_round_trip(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 5, "A"), letter(0, 9, "B"), letter(0, 7, "A")])
        assert [r["position"] for r in index.dead_letters()] == ["0:9", "0:7", "0:5"]
        assert index.dead_letters()[0] == {"position": "0:9", "reason_code": "B"}

    def test_listing_by_reason(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 5, "A"), letter(0, 9, "B"), letter(0, 7, "A"), letter(1, 8, "A")])
        assert [r["position"] for r in index.dead_letters("A")] == ["1:8", "0:7", "0:5"]
        assert [r["position"] for r in index.dead_letters("B")] == ["0:9"]
        assert index.dead_letters("C") == []

    def test_empty_reason_lists_all(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 1, "A"), letter(0, 2, "B")])
        assert [r["position"] for r in index.dead_letters("")] == ["0:2", "0:1"]

    def test_listing_is_bounded_by_limit(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, o, "A") for o in range(20)])
        assert [r["position"] for r in index.dead_letters(limit=3)] == ["0:19", "0:18", "0:17"]
        assert [r["position"] for r in index.dead_letters("A", limit=2)] == ["0:19", "0:18"]

    def test_equal_offsets_tie_break_on_partition(self, index: ConsoleIndex) -> None:
        index.fold(dead_letters=[letter(0, 3, "A"), letter(2, 3, "A"), letter(1, 3, "A")])
        assert [r["position"] for r in index.dead_letters()] == ["2:3", "1:3", "0:3"]


# ---- control --------------------------------------------------------------------------------------


class TestControl:
    def test_latest_json_object_per_key_wins(self, index: ConsoleIndex) -> None:
        index.fold(
            control=[
                (b"connection:a", b'{"paused": true}'),
                (b"connection:b", b'{"paused": true}'),
                (b"connection:a", b'{"paused": false, "by": "ops"}'),
            ]
        )
        assert index.control() == {"connection:a": {"paused": False, "by": "ops"}, "connection:b": {"paused": True}}
        index.fold(control=[(b"connection:b", b'{"paused": false}')])
        assert index.control()["connection:b"] == {"paused": False}

    def test_a_tombstone_removes_the_key(self, index: ConsoleIndex) -> None:
        index.fold(control=[(b"k1", b'{"a": 1}'), (b"k2", b'{"b": 2}')])
        index.fold(control=[(b"k1", None)])
        assert index.control() == {"k2": {"b": 2}}

    def test_a_tombstone_then_a_value_in_one_batch(self, index: ConsoleIndex) -> None:
        index.fold(control=[(b"k", b'{"a": 1}'), (b"k", None), (b"k", b'{"a": 2}')])
        assert index.control() == {"k": {"a": 2}}

    def test_a_tombstone_for_an_unknown_key_is_harmless(self, index: ConsoleIndex) -> None:
        index.fold(control=[(b"never", None)])
        assert index.control() == {}

    @pytest.mark.parametrize("junk", [b"not json", b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe", b""])
    def test_values_that_are_not_json_objects_are_ignored(self, index: ConsoleIndex, junk: bytes) -> None:
        index.fold(control=[(b"k", b'{"a": 1}')])
        index.fold(control=[(b"k", junk), (b"fresh", junk)])
        assert index.control() == {"k": {"a": 1}}

    def test_a_record_without_a_key_is_ignored(self, index: ConsoleIndex) -> None:
        index.fold(control=[(None, b'{"a": 1}'), (None, None)])
        assert index.control() == {}

    def test_undecodable_keys_are_kept_with_replacement_characters(self, index: ConsoleIndex) -> None:
        index.fold(control=[(b"k\xff", b'{"a": 1}')])
        assert index.control() == {"k\ufffd": {"a": 1}}
        index.fold(control=[(b"k\xff", None)])
        assert index.control() == {}

    def test_nested_values_round_trip(self, index: ConsoleIndex) -> None:
        value = {"paused": True, "by": {"who": "ana", "tags": [1, "x", None]}, "until": 1_700_000_000_000}
        index.fold(control=[(b"k", json.dumps(value).encode())])
        assert index.control() == {"k": value}


# ---- transactions and lifecycle -------------------------------------------------------------------


class TestRollback:
    def test_a_failing_jobs_iterable_rolls_back_the_batch(self, index: ConsoleIndex) -> None:
        index.fold(jobs=[update(row("kept", status="QUEUED"), b"old")], control=[(b"k", b'{"a": 1}')])
        with pytest.raises(Boom):
            index.fold(
                jobs=raising_after(
                    update(row("new-1")), update(row("kept", status="FAILED"), b"new"), tombstone("kept")
                ),
            )
        assert ids(index.search(JobQuery())) == ["kept"]
        records = index.job("kept")
        assert records is not None and records.state == (0, b"old")
        assert index.search(JobQuery())[0].status == "QUEUED"
        assert index.control() == {"k": {"a": 1}}

    def test_a_failure_in_a_later_stream_rolls_back_the_earlier_ones(self, index: ConsoleIndex) -> None:
        with pytest.raises(Boom):
            index.fold(
                jobs=[update(row("r-1"))],
                statuses=[("r-1", 1, b"s1")],
                files=[("r-1", "0:1", b"f1")],
                dead_letters=[letter(0, 1, "A")],
                control=raising_after((b"k", b'{"a": 1}')),
            )
        assert index.jobs_total() == 0
        assert index.job("r-1") is None
        assert index.dead_letter_counts() == {}
        assert index.control() == {}

    def test_a_failing_statuses_iterable_rolls_back(self, index: ConsoleIndex) -> None:
        with pytest.raises(Boom):
            index.fold(jobs=[update(row("r-1"))], statuses=raising_after(("r-1", 1, b"s1")))
        assert index.jobs_total() == 0 and index.job("r-1") is None

    def test_the_index_works_after_a_rolled_back_batch(self, index: ConsoleIndex) -> None:
        with pytest.raises(Boom):
            index.fold(jobs=raising_after(update(row("r-1"))))
        index.fold(jobs=[update(row("r-2"))], control=[(b"k", b'{"a": 1}')])
        assert ids(index.search(JobQuery())) == ["r-2"]
        assert index.control() == {"k": {"a": 1}}

    def test_a_rolled_back_control_value_does_not_come_back_later(self, index: ConsoleIndex) -> None:
        """BUG (worker/console/index.py, ConsoleIndex.fold): ``apply_control`` folds into
        the in-memory ``self._control`` before the transaction commits, and the ROLLBACK
        does not undo it. A later record for the same key that leaves the in-memory state
        unchanged (a non-JSON or non-object value) then writes the rolled-back value to the
        control table."""
        with pytest.raises(Boom):
            index.fold(control=raising_after((b"k", b'{"rolled": "back"}')))
        assert index.control() == {}
        index.fold(control=[(b"k", b"not json")])
        assert index.control() == {}, "a value from a rolled-back batch was resurrected"


class TestLifecycle:
    def test_a_stale_index_file_is_deleted_at_start(self, tmp_path: Path) -> None:
        path = tmp_path / "index.sqlite"
        first = ConsoleIndex(path)
        first.fold(jobs=[update(row("r-1"))], control=[(b"k", b'{"a": 1}')], dead_letters=[letter(0, 1, "A")])
        first.close()
        second = ConsoleIndex(path)
        try:
            assert second.jobs_total() == 0
            assert second.control() == {}
            assert second.dead_letter_counts() == {}
        finally:
            second.close()

    def test_a_garbage_file_and_its_journal_are_replaced(self, tmp_path: Path) -> None:
        path = tmp_path / "index.sqlite"
        path.write_bytes(b"this is not a database" * 100)
        journal = tmp_path / "index.sqlite-journal"
        journal.write_bytes(b"stale journal")
        ix = ConsoleIndex(path)
        try:
            assert not journal.exists()
            ix.fold(jobs=[update(row("r-1"))])
            assert ix.jobs_total() == 1
        finally:
            ix.close()

    def test_the_directory_is_created(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "index.sqlite"
        ix = ConsoleIndex(path)
        try:
            assert path.exists()
        finally:
            ix.close()
