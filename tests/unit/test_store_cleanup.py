"""StoreSet.cleanup and remove_departed_instances: stores nobody will open warm again are
removed, stores in use and other workers' stores are not, and a large state dir warns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.unit.store_support import LOG, MIB, Clock
from worker.config import Settings
from worker.store import CleanupPolicy, Entry, StoreMemory, StoreSet
from worker.store.cleanup import DEPARTED_MIN_AGE_MS, partition_of

IDLE_MS = 600_000
GROUP = "export-worker"


def store_set(root: Path, memory: StoreMemory, clock: Clock, *, writer: str = "pod-1", **policy: int) -> StoreSet:
    return StoreSet(
        root, group_id=GROUP, writer=writer, memory=memory, clock=clock, cleanup_policy=CleanupPolicy(**policy)
    )


@pytest.fixture
def stores(tmp_path: Path, memory: StoreMemory, clock: Clock) -> Iterator[StoreSet]:
    opened = store_set(tmp_path, memory, clock, idle_ms=IDLE_MS)
    yield opened
    opened.close_all()


def written_at(path: Path, ms: int) -> None:
    """Give ``path`` and everything below it the modification time ``ms``, as if last
    written then (on the fake clock)."""
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(folder, name), ns=(ms * 1_000_000, ms * 1_000_000))
    os.utime(path, ns=(ms * 1_000_000, ms * 1_000_000))


def closed_store(stores: StoreSet, partition: int, clock: Clock, *, complete: bool = True) -> Path:
    """A partition's store as revoke leaves it: data, a checkpoint, closed, last written now."""
    opened = stores.open(replace(LOG, partition=partition))
    opened.store.apply([Entry(b"a", b"A", open=False, due_ms=9)], 400)
    stores.checkpoint(partition, complete=complete)
    stores.close(partition)
    directory = stores.directory(LOG.topic, partition)
    written_at(directory, clock.now)
    return directory


class TestCleanup:
    def test_an_unowned_store_unused_for_the_cleanup_delay_is_removed(self, stores: StoreSet, clock: Clock) -> None:
        """Unused for state_cleanup_s: removed, and reported as removed."""
        directory = closed_store(stores, 3, clock)
        clock.now += IDLE_MS
        cleaned = stores.cleanup(set(), clock.now)
        assert (cleaned.removed, directory.exists()) == ((directory,), False)

    def test_an_unowned_store_used_recently_is_kept(self, stores: StoreSet, clock: Clock) -> None:
        """A partition that comes back within state_cleanup_s still finds its store warm."""
        directory = closed_store(stores, 3, clock)
        clock.now += IDLE_MS - 1
        assert stores.cleanup(set(), clock.now).removed == ()
        assert directory.is_dir()

    def test_a_file_written_after_the_checkpoint_counts_as_use(self, stores: StoreSet, clock: Clock) -> None:
        """The newest of the checkpoint and the files decides (a crash leaves writes after it)."""
        directory = closed_store(stores, 3, clock)
        written_at(directory / "db", clock.now + IDLE_MS // 2)
        clock.now += IDLE_MS
        assert stores.cleanup(set(), clock.now).removed == ()
        clock.now += IDLE_MS // 2
        assert stores.cleanup(set(), clock.now).removed == (directory,)

    def test_an_owned_store_is_kept_however_old(self, stores: StoreSet, clock: Clock) -> None:
        """Owned but not open (assigned, not yet restored): never removed."""
        directory = closed_store(stores, 3, clock)
        (directory / "checkpoint.json").unlink()
        clock.now += 100 * IDLE_MS
        assert stores.cleanup({3}, clock.now).removed == ()
        assert directory.is_dir()

    def test_an_open_store_is_kept_however_old(self, stores: StoreSet, clock: Clock) -> None:
        """Open in this StoreSet, even without a checkpoint and missing from ``owned``."""
        stores.open(LOG)
        directory = stores.directory(LOG.topic, 3)
        written_at(directory, clock.now)
        clock.now += 100 * IDLE_MS
        assert stores.cleanup(set(), clock.now).removed == ()
        assert stores.get(3) is not None and (directory / "db").is_dir()

    def test_a_store_without_a_checkpoint_is_removed_at_once(self, stores: StoreSet, clock: Clock) -> None:
        """No checkpoint: the next open would wipe it anyway, so it is not kept for the delay."""
        directory = closed_store(stores, 3, clock)
        (directory / "checkpoint.json").unlink()
        assert stores.cleanup(set(), clock.now).removed == (directory,)

    def test_a_store_of_an_incomplete_restore_is_removed_at_once(self, stores: StoreSet, clock: Clock) -> None:
        """complete=false: the restore never reached the end."""
        directory = closed_store(stores, 3, clock, complete=False)
        assert stores.cleanup(set(), clock.now).removed == (directory,)

    def test_only_the_stores_to_remove_are_removed(self, stores: StoreSet, clock: Clock) -> None:
        """Of an idle, an owned, a recent and an incomplete store, the idle and incomplete go."""
        idle = closed_store(stores, 0, clock)
        clock.now += IDLE_MS
        owned = closed_store(stores, 1, clock)
        recent = closed_store(stores, 2, clock)
        incomplete = closed_store(stores, 3, clock, complete=False)
        clock.now += IDLE_MS // 2
        cleaned = stores.cleanup({1}, clock.now)
        assert sorted(cleaned.removed) == [idle, incomplete]
        assert (owned.is_dir(), recent.is_dir()) == (True, True)

    def test_zero_delay_removes_every_unused_store(self, tmp_path: Path, memory: StoreMemory, clock: Clock) -> None:
        """state_cleanup_s=0: a revoked partition's store goes at the next pass."""
        stores = store_set(tmp_path, memory, clock, idle_ms=0)
        directory = closed_store(stores, 3, clock)
        assert stores.cleanup(set(), clock.now).removed == (directory,)

    def test_other_instances_and_groups_are_not_touched(
        self, tmp_path: Path, memory: StoreMemory, stores: StoreSet, clock: Clock
    ) -> None:
        """Stores of another instance id or another group are left alone, however stale."""
        others = [
            store_set(tmp_path, memory, clock, writer="pod-2"),
            StoreSet(tmp_path, group_id="other-group", writer="pod-1", memory=memory, clock=clock),
        ]
        directories = [closed_store(other, 3, clock, complete=False) for other in others]
        clock.now += 100 * IDLE_MS
        assert stores.cleanup(set(), clock.now).removed == ()
        assert [d.is_dir() for d in directories] == [True, True]

    def test_what_is_not_a_store_directory_is_left_alone(self, stores: StoreSet, clock: Clock) -> None:
        """Only ``<topic>-<partition>`` directories are stores; other entries are kept."""
        mine = stores.instance_directory()
        (mine / "notes").mkdir(parents=True)
        (mine / "export.jobs-x").mkdir()
        (mine / "export.jobs-7").write_text("a file, not a store")
        clock.now += 100 * IDLE_MS
        assert stores.cleanup(set(), clock.now).removed == ()
        assert sorted(p.name for p in mine.iterdir()) == ["export.jobs-7", "export.jobs-x", "notes"]

    def test_nothing_on_disk_yet_is_nothing_to_do(self, stores: StoreSet, clock: Clock) -> None:
        """Before the first store is opened the instance directory does not exist."""
        cleaned = stores.cleanup(set(), clock.now)
        assert (cleaned.removed, cleaned.bytes_used) == ((), 0)


class TestSize:
    def test_bytes_used_counts_what_is_left_of_this_instance(
        self, tmp_path: Path, memory: StoreMemory, stores: StoreSet, clock: Clock
    ) -> None:
        """Measured after the removals, and only this instance's directory: neither a
        removed store nor another instance's store counts."""
        kept = closed_store(stores, 1, clock)
        (kept / "db" / "ballast").write_bytes(os.urandom(256 * 1024))
        gone = closed_store(stores, 2, clock, complete=False)
        (gone / "db" / "ballast").write_bytes(os.urandom(2 * MIB))
        other = closed_store(store_set(tmp_path, memory, clock, writer="pod-2"), 1, clock)
        (other / "db" / "ballast").write_bytes(os.urandom(2 * MIB))
        used = stores.cleanup({1}, clock.now).bytes_used
        assert 256 * 1024 <= used < 2 * MIB

    @pytest.mark.parametrize(("share", "warned"), [(0.7, False), (0.9, True)])
    def test_a_directory_past_80_percent_of_the_limit_warns(
        self, tmp_path: Path, memory: StoreMemory, clock: Clock, share: float, warned: bool
    ) -> None:
        """At 90 % of state_max_mb one ``state directory large`` warning with the numbers;
        at 70 % none."""
        limit = 8 * MIB
        stores = store_set(tmp_path, memory, clock, max_bytes=limit)
        directory = closed_store(stores, 1, clock)
        empty = stores.cleanup({1}, clock.now).bytes_used
        (directory / "db" / "ballast").write_bytes(os.urandom(int(share * limit) - empty))
        with capture_logs() as logs:
            used = stores.cleanup({1}, clock.now).bytes_used
        warnings = [
            (e["log_level"], e["bytes_used"], e["max_bytes"]) for e in logs if e["event"] == "state directory large"
        ]
        assert warnings == ([("warning", used, limit)] if warned else [])
        assert abs(used - share * limit) < 0.05 * limit  # the ballast landed where intended


class TestDepartedInstances:
    AGE_MS = 2 * DEPARTED_MIN_AGE_MS

    def test_a_stale_instance_directory_of_the_group_is_removed(
        self, tmp_path: Path, memory: StoreMemory, stores: StoreSet, clock: Clock
    ) -> None:
        """Another instance id whose newest file is the given age old: removed whole."""
        gone = store_set(tmp_path, memory, clock, writer="demo-1a2b3c")
        closed_store(gone, 3, clock)
        written_at(gone.instance_directory(), clock.now)
        clock.now += self.AGE_MS
        removed = stores.remove_departed_instances(self.AGE_MS, clock.now)
        assert (removed, gone.instance_directory().exists()) == ((gone.instance_directory(),), False)

    def test_an_instance_with_one_recent_file_is_kept(
        self, tmp_path: Path, memory: StoreMemory, stores: StoreSet, clock: Clock
    ) -> None:
        """One fresh file anywhere below it (a live DB's LOG) keeps the whole directory."""
        live = store_set(tmp_path, memory, clock, writer="pod-2")
        directory = closed_store(live, 3, clock)
        written_at(live.instance_directory(), clock.now)
        clock.now += self.AGE_MS
        written_at(directory / "db" / "LOG", clock.now - 1)
        assert stores.remove_departed_instances(self.AGE_MS, clock.now) == ()
        assert (directory / "db").is_dir()

    def test_its_own_directory_and_other_groups_are_kept(
        self, tmp_path: Path, memory: StoreMemory, stores: StoreSet, clock: Clock
    ) -> None:
        """However old: this instance's own stores, and any other group's."""
        mine = closed_store(stores, 3, clock)
        written_at(stores.instance_directory(), clock.now)
        theirs_set = StoreSet(tmp_path, group_id="other-group", writer="pod-9", memory=memory, clock=clock)
        theirs = closed_store(theirs_set, 3, clock)
        written_at(theirs_set.instance_directory(), clock.now)
        clock.now += 10 * self.AGE_MS
        assert stores.remove_departed_instances(self.AGE_MS, clock.now) == ()
        assert (mine.is_dir(), theirs.is_dir()) == (True, True)

    def test_an_age_a_running_worker_could_reach_is_refused(self, stores: StoreSet, clock: Clock) -> None:
        """Below an hour a live worker's directory could look stale: a ValueError, nothing removed."""
        with pytest.raises(ValueError, match="running worker"):
            stores.remove_departed_instances(DEPARTED_MIN_AGE_MS - 1, clock.now)


class TestPolicy:
    def test_the_policy_comes_from_the_settings(self) -> None:
        """state_cleanup_s and state_max_mb, in ms and bytes."""
        settings = Settings(state_cleanup_s=90.5, state_max_mb=512)
        assert CleanupPolicy.from_settings(settings) == CleanupPolicy(idle_ms=90_500, max_bytes=512 * MIB)

    def test_the_defaults_are_the_documented_ones(self) -> None:
        """600 s, like Kafka Streams' state.cleanup.delay.ms, and a 2 GiB ceiling."""
        assert CleanupPolicy.from_settings(Settings()) == CleanupPolicy() == CleanupPolicy(600_000, 2048 * MIB)

    @pytest.mark.parametrize(
        "values", [{"state_max_mb": 15}, {"state_cleanup_s": -1}, {"state_cleanup_s": float("inf")}]
    )
    def test_out_of_bounds_values_are_refused(self, values: dict[str, float]) -> None:
        """A state_max_mb below 16 MiB, a negative or infinite delay: refused at load."""
        with pytest.raises(ValueError):
            Settings(**values)  # type: ignore[arg-type]


class TestStoreNames:
    @pytest.mark.parametrize(
        ("name", "partition"),
        [("export.jobs-3", 3), ("demo.export-jobs-12", 12), ("export.jobs-x", None), ("-3", None), ("jobs", None)],
    )
    def test_the_partition_is_the_number_after_the_last_dash(self, name: str, partition: int | None) -> None:
        """Topic names may hold dashes; a name without a topic or number is no store."""
        assert partition_of(name) == partition
