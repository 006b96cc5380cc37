"""The throughput bench times a worker from its first request read, which it finds in the
worker's log (``bench.throughput.first_read_at``): the lines read here are written by the
worker's own logging, so a change to them that would blind the bench fails here."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from bench.throughput import first_read_at
from tests.log_capture import json_lines
from worker.observability import log_status

STATUS = {
    "request_id": "t-1",
    "vendor": "itron",
    "connection": "itron",
    "vendor_job_id": None,
    "status": "ACCEPTED",
    "previous": None,
    "sequence": 1,
    "error": None,
}

# A line cut short (a killed process) and lines that only mention "status".
TORN = '{"event":"status","timestamp":"2026-12-08T01:00:00.00\n["status"]\n{"event":"status"}\n'


def worker_lines(monkeypatch: pytest.MonkeyPatch, statuses: int = 3) -> str:
    """What a worker logs as it starts and reads its first requests: lines that mention
    "status" without being a status event come before the status lines."""
    with json_lines(monkeypatch) as buffer:
        log = structlog.get_logger("export_worker")
        log.info("worker started", topic="export.requests")
        log.info("partitions restored", partitions=[0, 1], jobs=0)
        log.info("call answered", kind="status")
        for sequence in range(statuses):
            log_status({**STATUS, "request_id": f"t-{sequence}"})
        return buffer.getvalue()


def stamp_of_first_status(text: str) -> float:
    for line in text.splitlines():
        fields = json.loads(line)
        if fields["event"] == "status":
            return datetime.fromisoformat(fields["timestamp"]).timestamp()
    raise AssertionError("no status line")


def test_the_first_status_line_of_this_run_is_its_first_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    earlier = worker_lines(monkeypatch)  # an earlier run appended to the same file
    mine = worker_lines(monkeypatch)
    log = tmp_path / "worker-tput-0.log"
    log.write_text(earlier + TORN + mine)
    first = first_read_at(log, len((earlier + TORN).encode()))
    assert first == stamp_of_first_status(mine)
    assert first > stamp_of_first_status(earlier)
    # From the start of the file it is the earlier run's.
    assert first_read_at(log, 0) == stamp_of_first_status(earlier)


def test_the_damaged_lines_are_passed_over(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = worker_lines(monkeypatch)
    log = tmp_path / "worker.log"
    log.write_text(TORN + mine)
    assert first_read_at(log, 0) == stamp_of_first_status(mine)


def test_a_run_that_logged_no_status_is_an_error_not_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    earlier = worker_lines(monkeypatch)
    mine = worker_lines(monkeypatch, statuses=0)
    log = tmp_path / "worker.log"
    log.write_text(earlier + mine)
    with pytest.raises(RuntimeError, match="no status event"):
        first_read_at(log, len(earlier.encode()))
