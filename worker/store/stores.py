"""The open stores of this process, one per owned ``export.jobs`` partition.

Layout: ``<state dir>/<group id>/<instance id>/<topic>-<partition>/`` holds ``db/``
(RocksDB) and ``checkpoint.json``. The group and instance ids are in the path, so a
store is never shared between groups, nor between workers that share a state dir (the
demo, tests, several workers on one host); a restarted worker with the same instance id
finds its stores again. A store that cannot be trusted is wiped and re-created empty here; rebuilding
it from the topic is the restore's work. Stores nobody will open warm again are removed
by ``cleanup`` (``cleanup.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from worker.store import checkpoint, keys
from worker.store.checkpoint import Checkpoint, LogFacts, Trust, Wipe
from worker.store.cleanup import DEFAULT_POLICY, Cleaned, CleanupPolicy, sweep_departed, sweep_instance
from worker.store.errors import StoreCorrupt, StoreUntrusted
from worker.store.options import StoreMemory
from worker.store.partition import PartitionStore, wall_ms

log = structlog.get_logger("export_worker")


@dataclass(frozen=True, slots=True)
class Opened:
    store: PartitionStore
    trust: Trust  # warm: read the topic from store.offset; else it was wiped and is empty


class StoreSet:
    """Args:
    root: the state dir (``EXPORT_WORKER_STATE_DIR``).
    group_id: the consumer group; stores of other groups are never touched.
    writer: this worker's instance id: part of the path, and recorded in each checkpoint.
    memory: the process's one cache and write-buffer budget.
    cleanup_policy: when ``cleanup`` removes an unused store, and the size it warns near.
    """

    def __init__(
        self,
        root: Path,
        *,
        group_id: str,
        writer: str,
        memory: StoreMemory,
        clock: Callable[[], int] = wall_ms,
        cleanup_policy: CleanupPolicy = DEFAULT_POLICY,
    ) -> None:
        self.root = root
        self.group_id = group_id
        self.writer = writer
        self.memory = memory
        self.cleanup_policy = cleanup_policy
        self._clock = clock
        self._open: dict[int, tuple[PartitionStore, LogFacts]] = {}

    def instance_directory(self) -> Path:
        return self.root / self.group_id / self.writer

    def directory(self, topic: str, partition: int) -> Path:
        return self.instance_directory() / f"{topic}-{partition}"

    def open(self, log_facts: LogFacts) -> Opened:
        """Open the partition's store if it can be trusted, else wipe it and open it
        empty. StoreLocked (another process holds it) and other StoreErrors propagate."""
        self.close(log_facts.partition)
        directory = self.directory(log_facts.topic, log_facts.partition)
        found = checkpoint.read(directory)
        trust = checkpoint.trust_file(found, log_facts, self.group_id)
        store: PartitionStore | None = None
        if found is not None and trust.warm:
            try:
                store = PartitionStore.open(directory / "db", log_facts.partition, self.memory, clock=self._clock)
            except StoreCorrupt as exc:
                trust = Trust(Wipe.CORRUPT, str(exc))
            else:
                trust = checkpoint.trust_store(
                    found,
                    log_facts,
                    offset=store.offset,
                    written_at_ms=store.written_at_ms,
                    format_ok=store.format == keys.FORMAT,
                    now_ms=self._clock(),
                )
                if not trust.warm:
                    store.close()
                    store = None
        if store is None:
            self._wipe(directory, trust)
            store = PartitionStore.open(directory / "db", log_facts.partition, self.memory, clock=self._clock)
        self._open[log_facts.partition] = (store, log_facts)
        return Opened(store, trust)

    def get(self, partition: int) -> PartitionStore | None:
        entry = self._open.get(partition)
        return None if entry is None else entry[0]

    def checkpoint(self, partition: int, *, complete: bool = True) -> Checkpoint:
        """Write the partition's ``checkpoint.json`` at the store's current offset."""
        store, facts = self._open[partition]
        if store.offset is None:
            raise StoreUntrusted(f"store of partition {partition} has no offset yet")
        written = Checkpoint(
            cluster_id=facts.cluster_id,
            topic=facts.topic,
            topic_id=facts.topic_id,
            partition=partition,
            group_id=self.group_id,
            offset=store.offset,
            written_at_ms=self._clock(),
            writer=self.writer,
            complete=complete,
        )
        checkpoint.write(store.path.parent, written)
        return written

    def distrust(self, partition: int) -> None:
        """The store can no longer be believed (a failed write): the next open wipes it."""
        store, _ = self._open[partition]
        checkpoint.remove(store.path.parent)

    def close(self, partition: int) -> None:
        """Close the partition's store and keep its directory, so it can come back warm."""
        entry = self._open.pop(partition, None)
        if entry is not None:
            entry[0].close()

    def close_all(self) -> None:
        for partition in list(self._open):
            self.close(partition)

    def cleanup(self, owned: set[int], now_ms: int) -> Cleaned:
        """Remove this instance's stores of partitions neither ``owned`` nor open that have
        no complete checkpoint or were unused for ``cleanup_policy.idle_ms``; warn when
        this instance's directory passes 80 % of ``cleanup_policy.max_bytes``. Call it from
        the thread that calls ``open`` and ``close``, never while one of them runs."""
        in_use = set(owned) | set(self._open)
        return sweep_instance(self.instance_directory(), in_use, now_ms, self.cleanup_policy)

    def remove_departed_instances(self, max_age_ms: int, now_ms: int) -> tuple[Path, ...]:
        """Remove other instance ids' directories in this group whose newest file is
        ``max_age_ms`` old or older (workers gone from this disk, e.g. earlier demo runs);
        at least ``cleanup.DEPARTED_MIN_AGE_MS``. Other groups are never touched."""
        return sweep_departed(self.root / self.group_id, self.writer, max_age_ms, now_ms)

    def _wipe(self, directory: Path, trust: Trust) -> None:
        if directory.exists():
            log.warning("state store wiped", store=str(directory), reason=str(trust.wipe), detail=trust.detail)
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
