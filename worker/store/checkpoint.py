"""``checkpoint.json`` beside each store, and whether a store can be trusted.

The store's own ``m/offset`` and ``m/written_at`` say *where* it stands; the file says
*whose* store it is (cluster, topic incarnation, partition) and whether a restore ever
completed it. The rules (design state-store §3.8) are checked on assign, before any read;
a store that fails one is wiped and rebuilt from the topic.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

FILE = "checkpoint.json"
FORMAT = 1
# Margin under delete.retention.ms: a tombstone must not be compacted away while a store
# that has not seen it could still be trusted.
AGE_MARGIN_MS = 10 * 60_000


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What the broker says about the partition's log, read on assign."""

    cluster_id: str
    topic: str
    topic_id: str
    partition: int
    log_start: int
    high_watermark: int
    delete_retention_ms: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    cluster_id: str
    topic: str
    topic_id: str
    partition: int
    group_id: str
    offset: int
    written_at_ms: int
    writer: str
    complete: bool
    format: int = FORMAT


class Wipe(StrEnum):
    """Why a store is not trusted (the ``reason`` of ``export_worker_store_wipes_total``)."""

    NO_CHECKPOINT = "no_checkpoint"  # missing, unreadable, or a restore never completed
    FORMAT = "format"  # file or DB of another layout version
    OTHER_LOG = "other_log"  # another cluster, topic, topic incarnation or partition
    CORRUPT = "corrupt"  # RocksDB reports corruption
    BEHIND_CHECKPOINT = "behind_checkpoint"  # m/offset missing or below the file's offset
    OUTSIDE_LOG = "outside_log"  # m/offset below the log start or above the high watermark
    TOO_OLD = "too_old"  # tombstones it never saw may have been compacted away


@dataclass(frozen=True, slots=True)
class Trust:
    wipe: Wipe | None = None  # None: warm, the store can be used from its offset
    detail: str = ""

    @property
    def warm(self) -> bool:
        return self.wipe is None


WARM = Trust()


def read(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory``, or None when missing or unreadable."""
    try:
        data = json.loads((directory / FILE).read_text())
        return Checkpoint(**data)
    except (OSError, ValueError, TypeError):
        return None


def write(directory: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = directory / f"{FILE}.tmp"
    with tmp.open("w") as f:
        json.dump(asdict(checkpoint), f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def remove(directory: Path) -> None:
    """Stop trusting the store in ``directory`` (the next assign wipes it)."""
    (directory / FILE).unlink(missing_ok=True)


def trust_file(checkpoint: Checkpoint | None, log: LogFacts, group_id: str) -> Trust:
    """Rules 1-2: a complete checkpoint of this log. Checked before the DB is opened."""
    if checkpoint is None:
        return Trust(Wipe.NO_CHECKPOINT, "no readable checkpoint.json")
    if checkpoint.format != FORMAT:
        return Trust(Wipe.FORMAT, f"checkpoint format {checkpoint.format}, expected {FORMAT}")
    if not checkpoint.complete:
        return Trust(Wipe.NO_CHECKPOINT, "the restore that wrote it never completed")
    ours = (log.cluster_id, log.topic, log.topic_id, log.partition, group_id)
    theirs = (checkpoint.cluster_id, checkpoint.topic, checkpoint.topic_id, checkpoint.partition, checkpoint.group_id)
    if ours != theirs:
        return Trust(Wipe.OTHER_LOG, f"checkpoint of {theirs}, this log is {ours}")
    return WARM


def trust_store(
    checkpoint: Checkpoint,
    log: LogFacts,
    *,
    offset: int | None,
    written_at_ms: int | None,
    format_ok: bool,
    now_ms: int,
) -> Trust:
    """Rules 4-6, once the DB is open: its offset and age against the file and the log."""
    if not format_ok:
        return Trust(Wipe.FORMAT, "m/format is not ours")
    if offset is None or offset < checkpoint.offset:
        return Trust(Wipe.BEHIND_CHECKPOINT, f"m/offset {offset} below the checkpoint's {checkpoint.offset}")
    if not log.log_start <= offset <= log.high_watermark:
        return Trust(Wipe.OUTSIDE_LOG, f"m/offset {offset} outside the log [{log.log_start}, {log.high_watermark}]")
    age = now_ms - max(written_at_ms or 0, checkpoint.written_at_ms)
    if age >= log.delete_retention_ms - AGE_MARGIN_MS:
        return Trust(Wipe.TOO_OLD, f"{age} ms old, delete.retention.ms is {log.delete_retention_ms}")
    return WARM
