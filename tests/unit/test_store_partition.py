"""PartitionStore against a real RocksDB in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rocksdict import WriteBatch

from worker.store import Entry, PartitionStore, StoreMemory, StoreOptions, StoreUntrusted
from worker.store.errors import StoreCorrupt

MIB = 1 << 20


@pytest.fixture(scope="module")
def memory() -> StoreMemory:
    return StoreMemory(StoreOptions(cache_bytes=16 * MIB, write_buffer_bytes=4 * MIB))


@pytest.fixture
def store(tmp_path: Path, memory: StoreMemory) -> Iterator[PartitionStore]:
    opened = PartitionStore.open(tmp_path / "db", 3, memory, clock=lambda: 1_000)
    yield opened
    opened.close()


def done(request_id: str, due: int, value: bytes = b"v") -> Entry:
    return Entry(request_id.encode(), value, open=False, due_ms=due)


def running(request_id: str, value: bytes = b"v") -> Entry:
    return Entry(request_id.encode(), value, open=True, due_ms=0)


def tombstone(request_id: str) -> Entry:
    return Entry(request_id.encode(), None, open=False, due_ms=0)


class TestApply:
    def test_a_new_store_has_no_offset_and_no_jobs(self, store: PartitionStore) -> None:
        """A store just created claims nothing."""
        assert (store.offset, store.get("a"), list(store.open_ids())) == (None, None, [])

    def test_values_are_kept_raw_and_the_offset_moves(self, store: PartitionStore) -> None:
        """apply stores each value as given and records the next offset to read."""
        store.apply([running("a", b"\xc3\x01raw"), done("b", 5, b"bee")], offset=7)
        assert (store.get("a"), store.get("b"), store.offset) == (b"\xc3\x01raw", b"bee", 7)

    def test_the_last_entry_for_a_job_wins(self, store: PartitionStore) -> None:
        """Within one batch a later record of the same job replaces the earlier."""
        store.apply([running("a", b"one"), done("a", 5, b"two")], offset=2)
        assert (store.get("a"), list(store.open_ids())) == (b"two", [])

    def test_a_tombstone_deletes_the_value_and_the_open_entry(self, store: PartitionStore) -> None:
        """A null value removes the job from the store."""
        store.apply([running("a")], offset=1)
        store.apply([tombstone("a")], offset=2)
        assert (store.get("a"), list(store.open_ids()), store.offset) == (None, [], 2)

    def test_an_offset_below_the_stored_one_is_refused(self, store: PartitionStore) -> None:
        """The store never claims records it did not see (Quix's InvalidChangelogOffset)."""
        store.apply([running("a")], offset=10)
        with pytest.raises(StoreUntrusted, match="below"):
            store.apply([running("b")], offset=9)
        assert (store.get("b"), store.offset) == (None, 10)

    def test_data_and_offset_are_written_together_or_not_at_all(self, store: PartitionStore) -> None:
        """A failure while the batch is built leaves neither the entries nor the offset."""

        def entries() -> Iterator[Entry]:
            yield running("a")
            raise RuntimeError("encoder broke")

        with pytest.raises(RuntimeError):
            store.apply(entries(), offset=5)
        assert (store.get("a"), store.offset) == (None, None)

    def test_the_write_time_is_recorded(self, store: PartitionStore) -> None:
        """m/written_at comes from the store's clock."""
        store.apply([], offset=0)
        assert store.written_at_ms == 1_000


class TestOpenIndex:
    def test_open_jobs_are_listed_and_finished_ones_leave(self, store: PartitionStore) -> None:
        """o/ holds exactly the jobs whose latest state is open."""
        store.apply([running("b"), running("a"), running("c")], offset=1)
        store.apply([done("b", 5)], offset=2)
        assert list(store.open_ids()) == ["a", "c"]

    def test_what_a_folded_batch_raises_leaves_the_store_as_it_was(self, store: PartitionStore) -> None:
        store.apply([running("a", b"A")], offset=1)

        def fill(batch: WriteBatch) -> None:
            batch.put(b"j/b", b"B")
            raise ValueError("stop")

        with pytest.raises(ValueError):
            store.write_folded(fill, 5)
        assert store.offset == 1 and store.get("b") is None

    def test_open_values_and_forget(self, store: PartitionStore) -> None:
        store.apply([running("a", b"A"), running("b", b"B"), done("c", 5, b"C")], offset=1)
        assert store.open_values() == [(b"a", b"A"), (b"b", b"B")]
        store.db.delete(b"j/b")
        assert store.open_values() == [(b"a", b"A"), (b"b", None)]  # an o/ entry without its job
        store.db.put(b"j/b", b"B")
        store.forget(b"a")
        assert store.open_values() == [(b"b", b"B")] and store.get("a") is None and store.offset == 1

    def test_ids_with_slashes_and_non_ascii_round_trip(self, store: PartitionStore) -> None:
        """Request ids are opaque UTF-8."""
        ids = ["a/b/c", "ünïcødé-✓", "x/" + "\x00"]
        store.apply([running(i) for i in ids], offset=1)
        assert sorted(store.open_ids()) == sorted(ids)
        assert all(store.get(i) == b"v" for i in ids)


class TestExpiryIndex:
    def test_due_entries_come_in_due_order_up_to_until(self, store: PartitionStore) -> None:
        """expiring returns (due, id) with due <= until, earliest first, ids breaking ties."""
        store.apply([done("late", 300), done("b", 100), done("a", 100), done("mid", 200), done("never", 301)], 1)
        assert store.expiring(300, limit=10) == [(100, "a"), (100, "b"), (200, "mid"), (300, "late")]

    def test_the_limit_bounds_the_slice(self, store: PartitionStore) -> None:
        """A sweep slice never returns more than its limit."""
        store.apply([done(f"j{i:03}", 1_000 + i) for i in range(50)], offset=1)
        assert store.expiring(10_000, limit=7) == [(1_000 + i, f"j{i:03}") for i in range(7)]
        assert store.expiring(10_000, limit=0) == []

    def test_due_times_past_one_byte_and_past_32_bits_sort_by_number(self, store: PartitionStore) -> None:
        """The 8-byte big-endian due time orders numerically, not by text."""
        dues = [2**40, 255, 256, 1_733_000_000_000, 1]
        store.apply([done(f"j{d}", d) for d in dues], offset=1)
        assert [due for due, _ in store.expiring(2**41, limit=10)] == sorted(dues)

    def test_drop_index_removes_a_ghost_only(self, store: PartitionStore) -> None:
        """Dropping an index entry keeps the value and the offset."""
        store.apply([done("a", 100)], offset=4)
        store.drop_index(100, "a")
        assert (store.expiring(1_000, limit=10), store.get("a"), store.offset) == ([], b"v", 4)


class TestReopen:
    def test_a_reopened_store_has_its_data_offset_and_indexes(self, tmp_path: Path, memory: StoreMemory) -> None:
        """Closing and opening again loses nothing."""
        first = PartitionStore.open(tmp_path / "db", 0, memory, clock=lambda: 42)
        first.apply([running("a", b"A"), done("b", 100, b"B"), done("c", 50, b"C")], offset=99)
        first.close()
        again = PartitionStore.open(tmp_path / "db", 0, memory)
        try:
            seen = (again.offset, again.written_at_ms, again.get("a"), list(again.open_ids()))
            assert seen == (99, 42, b"A", ["a"])
            assert again.expiring(1_000, limit=10) == [(50, "c"), (100, "b")]
        finally:
            again.close()

    def test_a_closed_store_refuses_reads(self, store: PartitionStore) -> None:
        """Use after close is an error, not a crash in RocksDB."""
        store.close()
        with pytest.raises(StoreUntrusted, match="closed"):
            store.get("a")

    def test_a_garbled_data_block_fails_a_scan_instead_of_ending_it(self, tmp_path: Path, memory: StoreMemory) -> None:
        """rocksdict's iterators stop quietly at a bad block; the store raises instead."""
        first = PartitionStore.open(tmp_path / "db", 0, memory)
        first.apply([running(f"job-{i:05}", bytes(200)) for i in range(3_000)], offset=1)
        first.db.flush()
        first.close()
        sst = next((tmp_path / "db").glob("*.sst"))
        data = bytearray(sst.read_bytes())
        at = data.find(b"o/job-01")  # inside a data block of the open index
        assert at > 0
        data[at : at + 64] = b"\xff" * 64
        sst.write_bytes(data)
        again = PartitionStore.open(tmp_path / "db", 0, memory)
        try:
            with pytest.raises(StoreCorrupt):
                list(again.open_ids())
        finally:
            again.close()
