"""The console's index: what the topics say, kept queryable on disk.

The console follows export.jobs, export.status, export.files, the dead-letter topic and
the control topic (``worker.console.follow``) and folds each record in here, so that a
page is a few indexed queries whatever the number of jobs: searching 100,000 jobs or
opening one job's lineage never reads a topic again.

SQLite, in a file the console owns: its memory is its page cache (``CACHE_KIB``), not
the number of jobs, and it is rebuilt from the topics at every start (it is a cache of
Kafka, never a source of truth), so it needs no durability and no migrations.

Synchronous: ``worker.console.follow.IndexThread`` runs every call on one thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.control import apply_control

# SQLite's page cache: the index's memory, whatever the number of jobs.
CACHE_KIB = 32_768
# Rows one search returns at most (a page of results).
PAGE = 50
# Dead letters one listing shows at most (newest first).
DEAD_LETTERS_SHOWN = 500
# A job page shows at most its latest status events and files.
MAX_EVENTS = 500
MAX_FILES = 100

_SCHEMA = """
CREATE TABLE jobs (
    request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, connection TEXT NOT NULL,
    vendor TEXT NOT NULL, status TEXT NOT NULL, phase TEXT NOT NULL, vendor_job_id TEXT,
    updated_at_ms INTEGER NOT NULL, partition INTEGER NOT NULL, value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX jobs_updated ON jobs (updated_at_ms);
CREATE INDEX jobs_status ON jobs (status, updated_at_ms);
CREATE INDEX jobs_tenant ON jobs (tenant, updated_at_ms);
CREATE INDEX jobs_connection ON jobs (connection, updated_at_ms);
CREATE INDEX jobs_open ON jobs (phase, vendor, status);
CREATE TABLE statuses (
    request_id TEXT NOT NULL, sequence INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (request_id, sequence)
) WITHOUT ROWID;
CREATE TABLE files (
    request_id TEXT NOT NULL, position TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (request_id, position)
) WITHOUT ROWID;
CREATE TABLE dead_letters (
    partition INTEGER NOT NULL, offset INTEGER NOT NULL, reason_code TEXT NOT NULL, failed_at TEXT NOT NULL,
    row TEXT NOT NULL, PRIMARY KEY (partition, offset)
) WITHOUT ROWID;
CREATE INDEX dead_letters_failed ON dead_letters (failed_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason_code, failed_at);
CREATE TABLE control (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


_UNCHANGED: dict[str, Any] = {}  # a control key's value before its record is folded in


@dataclass(frozen=True, slots=True)
class JobRow:
    """What a search result shows of a job (the full state is decoded on its page)."""

    request_id: str
    tenant: str
    connection: str
    vendor: str
    status: str
    phase: str
    vendor_job_id: str | None
    updated_at_ms: int
    partition: int


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """The latest export.jobs record of a request (``row`` None: a tombstone)."""

    request_id: str
    row: JobRow | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A job search; None (or empty) matches anything. ``request_id`` matches ids
    starting with it; results are newest update first, ``before_ms`` pages on."""

    request_id: str | None = None
    tenant: str | None = None
    connection: str | None = None
    vendor: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    before: tuple[int, str] | None = None  # (updated_at_ms, request_id) of the last row shown
    limit: int = PAGE

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.request_id:
            clauses.append("request_id >= ?")
            params.append(self.request_id)
            end = _prefix_end(self.request_id)
            if end is not None:
                clauses.append("request_id < ?")
                params.append(end)
        for column in ("tenant", "connection", "vendor", "status"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since_ms is not None:
            clauses.append("updated_at_ms >= ?")
            params.append(self.since_ms)
        if self.until_ms is not None:
            clauses.append("updated_at_ms < ?")
            params.append(self.until_ms)
        if self.before is not None:
            clauses.append("(updated_at_ms < ? OR (updated_at_ms = ? AND request_id < ?))")
            params += [self.before[0], self.before[0], self.before[1]]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _position_key(position: str) -> tuple[int, int]:
    """ "partition:offset" in numeric order (as text, "0:10" would come before "0:9")."""
    partition, _, offset = position.partition(":")
    return (int(partition), int(offset)) if partition.isdecimal() and offset.isdecimal() else (-1, -1)


def _prefix_end(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


@dataclass(frozen=True, slots=True)
class JobRecords:
    """A request's records as the index holds them: its latest state (partition,
    value), its status events and files (raw values, decoded by the page)."""

    state: tuple[int, bytes] | None
    statuses: list[bytes]
    files: list[bytes]


class ConsoleIndex:
    """The index file: folds records in (``put_*``), answers the pages' queries."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (path, path.with_name(path.name + "-journal")):
            stale.unlink(missing_ok=True)  # a cache of the topics: rebuilt at every start
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.executescript(
            f"PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -{CACHE_KIB};"
            "PRAGMA temp_store = MEMORY;" + _SCHEMA
        )

    def close(self) -> None:
        self._db.close()

    # ---- folding records in (one transaction per consumed batch) -----------------------

    def fold(
        self,
        jobs: Iterable[JobUpdate] = (),
        statuses: Iterable[tuple[str, int, bytes]] = (),
        files: Iterable[tuple[str, str, bytes]] = (),
        dead_letters: Iterable[tuple[int, int, str, dict[str, Any]]] = (),
        control: Iterable[tuple[bytes | None, bytes | None]] = (),
    ) -> None:
        """One consumed batch: job states (latest per request), status events
        (request id, sequence, value), files (request id, position, value), dead
        letters (partition, offset, reason code, listing row), control records."""
        db = self._db
        db.execute("BEGIN")
        try:
            for update in jobs:
                if update.row is None or update.value is None:
                    db.execute("DELETE FROM jobs WHERE request_id = ?", (update.request_id,))
                    continue
                r = update.row
                db.execute(
                    "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.request_id, r.tenant, r.connection, r.vendor, r.status, r.phase, r.vendor_job_id,
                     r.updated_at_ms, r.partition, update.value),
                )  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO statuses VALUES (?, ?, ?)", statuses)
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", files)
            db.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                (
                    (p, o, reason, str(row.get("failed_at") or ""), json.dumps(row))
                    for p, o, reason, row in dead_letters
                ),
            )
            for key, value in control:
                if key is None:
                    continue
                name = key.decode("utf-8", "replace")
                # The worker's own rule decides: the record may replace the key's value,
                # remove it (a tombstone) or leave it as it is (not a JSON object).
                folded: dict[str, Any] = {name: _UNCHANGED}
                apply_control(folded, key, value)
                if name not in folded:
                    db.execute("DELETE FROM control WHERE key = ?", (name,))
                elif folded[name] is not _UNCHANGED:
                    db.execute("INSERT OR REPLACE INTO control VALUES (?, ?)", (name, json.dumps(folded[name])))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ---- queries -----------------------------------------------------------------------

    def search(self, query: JobQuery) -> list[JobRow]:
        where, params = query.where()
        sql = (
            "SELECT request_id, tenant, connection, vendor, status, phase, vendor_job_id, updated_at_ms, partition "
            f"FROM jobs{where} ORDER BY updated_at_ms DESC, request_id DESC LIMIT ?"
        )
        return [JobRow(*row) for row in self._db.execute(sql, [*params, max(1, min(query.limit, PAGE))])]

    def job(self, request_id: str) -> JobRecords | None:
        db = self._db
        state = db.execute("SELECT partition, value FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        # The latest of each (a producer that resends a request id over and over adds a
        # DUPLICATE event each time): a page shows a bounded lineage.
        statuses = [
            v
            for (v,) in db.execute(
                "SELECT value FROM statuses WHERE request_id = ? ORDER BY sequence DESC LIMIT ?",
                (request_id, MAX_EVENTS),
            )
        ][::-1]
        rows = db.execute("SELECT position, value FROM files WHERE request_id = ?", (request_id,))
        files = [v for _p, v in sorted(rows, key=lambda r: _position_key(r[0]))][-MAX_FILES:]
        if state is None and not statuses and not files:
            return None
        return JobRecords((state[0], state[1]) if state is not None else None, statuses, files)

    def open_counts(self) -> dict[tuple[str, str], int]:
        """Open jobs by (vendor, status)."""
        rows = self._db.execute(
            "SELECT vendor, status, COUNT(*) FROM jobs WHERE phase != 'DONE' GROUP BY vendor, status"
        )
        return {(vendor, status): count for vendor, status, count in rows}

    def jobs_total(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT reason_code, COUNT(*) FROM dead_letters GROUP BY reason_code ORDER BY 2 DESC")
        return dict(rows.fetchall())

    def dead_letters(self, reason: str | None = None, limit: int = DEAD_LETTERS_SHOWN) -> list[dict[str, Any]]:
        """Newest first: by the time they failed (ISO 8601 UTC sorts as text), then by
        position."""
        sql = "SELECT row FROM dead_letters"
        params: list[Any] = []
        if reason:
            sql += " WHERE reason_code = ?"
            params.append(reason)
        sql += " ORDER BY failed_at DESC, partition DESC, offset DESC LIMIT ?"
        return [json.loads(row) for (row,) in self._db.execute(sql, [*params, limit])]

    def control(self) -> dict[str, dict[str, Any]]:
        return {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM control")}
