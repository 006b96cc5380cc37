"""checkpoint.json and the trust rules: an untrusted store is wiped and opened empty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.store_support import DAY_MS, LOG, NOW, Clock
from worker.store import Entry, LogFacts, StoreLocked, StoreMemory, StoreSet, Wipe
from worker.store import checkpoint as cp
from worker.store.partition import PartitionStore


@pytest.fixture
def stores(tmp_path: Path, memory: StoreMemory, clock: Clock) -> Iterator[StoreSet]:
    opened = StoreSet(tmp_path, group_id="export-worker", writer="pod-1", memory=memory, clock=clock)
    yield opened
    opened.close_all()


def restored(stores: StoreSet, log: LogFacts = LOG, offset: int = 400) -> None:
    """A completed restore: data in the store, a complete checkpoint, then closed."""
    opened = stores.open(log)
    opened.store.apply([Entry(b"a", b"A", open=True, due_ms=0), Entry(b"b", b"B", open=False, due_ms=9)], offset)
    stores.checkpoint(log.partition)
    stores.close(log.partition)


def warm_or_wiped(stores: StoreSet, log: LogFacts = LOG) -> Wipe | None:
    """Open again; the wipe reason (None when warm), after checking the data agrees."""
    opened = stores.open(log)
    data = (opened.store.get("a"), list(opened.store.open_ids()), opened.store.offset)
    assert data == ((b"A", ["a"], 400) if opened.trust.warm else (None, [], None))
    return opened.trust.wipe


class TestCheckpointFile:
    def test_written_atomically_and_read_back(self, tmp_path: Path) -> None:
        """write leaves only checkpoint.json (no temporary file) and read returns it."""
        written = cp.Checkpoint("c", "t", "id", 1, "g", 5, NOW, "pod", True)
        cp.write(tmp_path, written)
        assert (cp.read(tmp_path), [f.name for f in tmp_path.iterdir()]) == (written, ["checkpoint.json"])

    @pytest.mark.parametrize("text", ["{", "[]", '{"offset": 1}', ""])
    def test_an_unreadable_file_reads_as_none(self, tmp_path: Path, text: str) -> None:
        """Garbled or partial JSON is no checkpoint."""
        (tmp_path / "checkpoint.json").write_text(text)
        assert cp.read(tmp_path) is None

    def test_the_checkpoint_records_whose_store_it_is(self, stores: StoreSet) -> None:
        """StoreSet.checkpoint writes the log's identity, the store's offset and the writer."""
        restored(stores)
        data = json.loads((stores.directory("export.jobs", 3) / "checkpoint.json").read_text())
        assert data == {
            "cluster_id": "cluster-a", "topic": "export.jobs", "topic_id": LOG.topic_id, "partition": 3,
            "group_id": "export-worker", "offset": 400, "written_at_ms": NOW, "writer": "pod-1",
            "complete": True, "format": 1,
        }  # fmt: skip


class TestTrust:
    def test_a_store_with_a_complete_checkpoint_of_this_log_is_warm(self, stores: StoreSet) -> None:
        """Same cluster, topic incarnation and partition, recent, offset inside the log."""
        restored(stores)
        assert warm_or_wiped(stores) is None

    def test_a_new_store_is_opened_empty(self, stores: StoreSet) -> None:
        """No directory at all: nothing to trust, an empty store to restore into."""
        assert warm_or_wiped(stores) is Wipe.NO_CHECKPOINT

    def test_a_missing_checkpoint_wipes(self, stores: StoreSet) -> None:
        """Rule 1: data without checkpoint.json is not trusted."""
        restored(stores)
        (stores.directory("export.jobs", 3) / "checkpoint.json").unlink()
        assert warm_or_wiped(stores) is Wipe.NO_CHECKPOINT

    def test_an_incomplete_restore_wipes(self, stores: StoreSet) -> None:
        """Rule 1: a restore that never reached the end left complete=false."""
        opened = stores.open(LOG)
        opened.store.apply([Entry(b"a", b"A", open=True, due_ms=0)], 400)
        stores.checkpoint(3, complete=False)
        stores.close(3)
        assert warm_or_wiped(stores) is Wipe.NO_CHECKPOINT

    def test_a_distrusted_store_wipes(self, stores: StoreSet) -> None:
        """A store marked untrusted (failed write) is rebuilt on its next open."""
        restored(stores)
        stores.open(LOG)
        stores.distrust(3)
        stores.close(3)
        assert warm_or_wiped(stores) is Wipe.NO_CHECKPOINT

    @pytest.mark.parametrize(
        "other",
        [
            {"cluster_id": "cluster-b"},
            {"topic_id": "99999999-1111-2222-3333-444455556666"},  # topic deleted and recreated
        ],
    )
    def test_a_store_of_another_log_wipes(self, stores: StoreSet, other: dict[str, str]) -> None:
        """Rule 2: another cluster or another incarnation of the topic."""
        restored(stores)
        assert warm_or_wiped(stores, replace(LOG, **other)) is Wipe.OTHER_LOG  # type: ignore[arg-type]

    def test_a_checkpoint_of_another_partition_or_topic_wipes(self, stores: StoreSet) -> None:
        """Rule 2: a directory holding another partition's or topic's files is not used."""
        restored(stores)
        directory = stores.directory("export.jobs", 3)
        found = cp.read(directory)
        assert found is not None
        cp.write(directory, replace(found, partition=4))
        assert warm_or_wiped(stores) is Wipe.OTHER_LOG
        restored(stores)
        cp.write(directory, replace(found, topic="other.jobs"))
        assert warm_or_wiped(stores) is Wipe.OTHER_LOG

    def test_corrupt_db_files_wipe(self, stores: StoreSet) -> None:
        """Rule 3: RocksDB reports corruption on open (a garbled MANIFEST)."""
        restored(stores)
        manifest = next((stores.directory("export.jobs", 3) / "db").glob("MANIFEST-*"))
        data = bytearray(manifest.read_bytes())
        data[10:40] = b"\xff" * 30
        manifest.write_bytes(data)
        assert warm_or_wiped(stores) is Wipe.CORRUPT

    def test_a_deleted_sst_wipes(self, stores: StoreSet) -> None:
        """Rule 3: a table file the MANIFEST names is gone."""
        restored(stores)
        db = stores.directory("export.jobs", 3) / "db"
        store = PartitionStore.open(db, 3, stores.memory)
        store.db.flush()
        store.close()
        next(db.glob("*.sst")).unlink()
        assert warm_or_wiped(stores) is Wipe.CORRUPT

    def test_a_store_behind_its_checkpoint_wipes(self, stores: StoreSet) -> None:
        """Rule 4: the DB is never behind its own checkpoint; if it is, it is not ours."""
        restored(stores)
        directory = stores.directory("export.jobs", 3)
        found = cp.read(directory)
        assert found is not None
        cp.write(directory, replace(found, offset=450))
        assert warm_or_wiped(stores) is Wipe.BEHIND_CHECKPOINT

    @pytest.mark.parametrize("log", [replace(LOG, high_watermark=399), replace(LOG, log_start=401)])
    def test_an_offset_outside_the_log_wipes(self, stores: StoreSet, log: LogFacts) -> None:
        """Rule 5: above the high watermark (truncated or recreated) or below the log start."""
        restored(stores)
        assert warm_or_wiped(stores, log) is Wipe.OUTSIDE_LOG

    def test_a_store_older_than_the_tombstone_retention_wipes(self, stores: StoreSet, clock: Clock) -> None:
        """Rule 6: tombstones it never saw may be compacted away after delete.retention.ms."""
        restored(stores)
        clock.now += DAY_MS - cp.AGE_MARGIN_MS - 1
        assert warm_or_wiped(stores) is None
        stores.close(3)
        clock.now += 1
        assert warm_or_wiped(stores) is Wipe.TOO_OLD

    def test_a_wiped_store_can_be_rebuilt_and_trusted(self, stores: StoreSet) -> None:
        """After a wipe the same directory takes a new restore and comes back warm."""
        restored(stores)
        assert warm_or_wiped(stores, replace(LOG, cluster_id="cluster-b")) is Wipe.OTHER_LOG
        stores.close(3)
        restored(stores)
        assert warm_or_wiped(stores) is None

    def test_a_store_held_by_another_process_is_fatal_not_wiped(self, stores: StoreSet) -> None:
        """Rule 3: a lock error means someone else's store: never wipe it."""
        restored(stores)
        holder = PartitionStore.open(stores.directory("export.jobs", 3) / "db", 3, stores.memory)
        try:
            with pytest.raises(StoreLocked):
                stores.open(LOG)
        finally:
            holder.close()
        assert warm_or_wiped(stores) is None


class TestStoreSet:
    def test_stores_are_kept_per_group_instance_topic_and_partition(self, stores: StoreSet) -> None:
        """Each partition has its own directory under the group and the worker's instance id."""
        restored(stores)
        restored(stores, replace(LOG, partition=4))
        mine = stores.root / "export-worker" / "pod-1"
        assert sorted(p.name for p in mine.iterdir()) == ["export.jobs-3", "export.jobs-4"]

    def test_close_keeps_the_directory_and_get_forgets_the_store(self, stores: StoreSet) -> None:
        """A revoked partition's store stays on disk for a warm return."""
        restored(stores)
        assert stores.get(3) is None
        assert (stores.directory("export.jobs", 3) / "db").is_dir()
