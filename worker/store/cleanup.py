"""Removing stores that will not be opened warm again, and watching the state dir's size
(design state-store §3.8).

A store is a cache of its topic, so removing one costs at most a cold restore. Removal
therefore errs on the side of keeping: a store of a partition the worker owns or has
open is never touched, nor is anything outside the group's directory. Ages come from
the files' modification times (wall clock), so ``now_ms`` is wall-clock milliseconds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from worker.config import Settings
from worker.store import checkpoint

log = structlog.get_logger("export_worker")

MIB = 1 << 20
SIZE_WARNING_SHARE = 0.8
# A live worker's store directory is never this old: RocksDB appends its stats to LOG
# every stats_dump_period_sec (600 s) while the DB is open, and the worker rewrites
# checkpoint.json while it owns the partition. A shorter age could remove the stores of
# a worker that is running.
DEPARTED_MIN_AGE_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    idle_ms: int = 600_000  # a store unused this long is removed (Kafka Streams' state.cleanup.delay.ms)
    max_bytes: int = 2048 * MIB  # the state dir's expected ceiling: a warning above 80 % of it

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanupPolicy:
        return cls(round(settings.state_cleanup_s * 1000), settings.state_max_mb * MIB)


DEFAULT_POLICY = CleanupPolicy()


@dataclass(frozen=True, slots=True)
class Cleaned:
    removed: tuple[Path, ...]  # store directories removed by this pass
    bytes_used: int  # on disk under this instance's directory afterwards


class Removal(StrEnum):
    """Why a store directory was removed (the ``reason`` of the log line)."""

    NO_CHECKPOINT = "no_checkpoint"  # missing or unreadable: it would be wiped on open anyway
    INCOMPLETE = "incomplete"  # a restore that never completed: wiped on open anyway
    IDLE = "idle"  # a partition no longer owned, unused for the policy's idle_ms
    DEPARTED = "departed_instance"  # another instance id's directory, unused for the age given


def partition_of(name: str) -> int | None:
    """The partition of a ``<topic>-<partition>`` store directory name, else None."""
    topic, sep, number = name.rpartition("-")
    return int(number) if sep and topic and number.isdigit() else None


def sweep_instance(instance_dir: Path, in_use: set[int], now_ms: int, policy: CleanupPolicy) -> Cleaned:
    """Remove the stores under ``instance_dir`` of partitions not ``in_use`` that have
    no complete checkpoint or were last written ``policy.idle_ms`` ago or earlier."""
    removed = []
    for directory in _subdirectories(instance_dir):
        partition = partition_of(directory.name)
        if partition is None or partition in in_use:
            continue
        reason = _removal(directory, now_ms, policy.idle_ms)
        if reason is not None and _remove(directory, reason):
            removed.append(directory)
    used = disk_bytes(instance_dir)
    if used > SIZE_WARNING_SHARE * policy.max_bytes:
        log.warning(
            "state directory large",
            directory=str(instance_dir),
            bytes_used=used,
            max_bytes=policy.max_bytes,
            share=round(used / policy.max_bytes, 3),
        )
    return Cleaned(tuple(removed), used)


def sweep_departed(group_dir: Path, keep: str, max_age_ms: int, now_ms: int) -> tuple[Path, ...]:
    """Remove the directories of other instance ids under ``group_dir`` whose newest file
    is ``max_age_ms`` old or older: workers that no longer run on this disk."""
    if max_age_ms < DEPARTED_MIN_AGE_MS:
        raise ValueError(
            f"max_age_ms {max_age_ms} is below {DEPARTED_MIN_AGE_MS}: a running worker could lose its stores"
        )
    removed = []
    for directory in _subdirectories(group_dir):
        if directory.name == keep:
            continue
        if now_ms - last_write_ms(directory) >= max_age_ms and _remove(directory, Removal.DEPARTED):
            removed.append(directory)
    return tuple(removed)


def _removal(directory: Path, now_ms: int, idle_ms: int) -> Removal | None:
    found = checkpoint.read(directory)
    if found is None:
        return Removal.NO_CHECKPOINT
    if not found.complete:
        return Removal.INCOMPLETE
    # The checkpoint is written after the last store write on revoke; a crash can leave
    # later files behind it, so the newest of both counts.
    if now_ms - max(found.written_at_ms, last_write_ms(directory)) >= idle_ms:
        return Removal.IDLE
    return None


def _remove(directory: Path, reason: Removal) -> bool:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        return False
    except OSError as exc:  # housekeeping: the next pass tries again
        log.warning("state store not removed", store=str(directory), reason=str(reason), error=str(exc))
        return False
    log.info("state store removed", store=str(directory), reason=str(reason))
    return True


def last_write_ms(path: Path) -> int:
    """The newest modification time of ``path`` or anything below it, in ms (0 if none)."""
    return max((entry.st_mtime_ns // 1_000_000 for entry in _stats(path)), default=0)


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk below ``path``, as ``du`` and the kubelet count them."""
    return sum(entry.st_blocks * 512 for entry in _stats(path))


def _subdirectories(path: Path) -> list[Path]:
    try:
        return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.is_symlink())
    except FileNotFoundError:
        return []


def _stats(path: Path) -> Iterator[os.stat_result]:
    """``lstat`` of ``path`` and everything below it. Files an open store deletes meanwhile
    (compaction) are skipped."""
    try:
        yield path.lstat()
    except FileNotFoundError:
        return
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                yield os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
