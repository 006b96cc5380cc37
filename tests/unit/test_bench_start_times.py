"""The throughput bench times a worker from its first request read, which it finds in the
worker's log (``bench.throughput.start_times``): the lines read here are written by the
worker's own logging, so a change to them that would blind the bench fails here."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from bench.throughput import start_times
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


def worker_lines(monkeypatch: pytest.MonkeyPatch, *, restored: bool = True, statuses: int = 2) -> tuple[str, float]:
    """What a worker logs as it starts and reads its first requests, and the
    ``time.time()`` right before its first status line."""
    with json_lines(monkeypatch) as buffer:
        log = structlog.get_logger("export_worker")
        log.info("worker started", topic="export.requests")
        if restored:
            log.info("partitions restored", partitions=[0, 1], jobs=0)
        before = time.time()
        for sequence in range(statuses):
            log_status({**STATUS, "request_id": f"t-{sequence}"})
        log.info("call answered", kind="status")  # a "status" that is not the event
        return buffer.getvalue(), before


def test_the_first_status_line_after_the_runs_start_and_the_restore_before_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    earlier, _ = worker_lines(monkeypatch)  # an earlier run appended to the same file
    mine, before = worker_lines(monkeypatch)
    log = tmp_path / "worker-tput-0.log"
    log.write_text(earlier + "not json\n" + mine)
    first, restored = start_times(log, len(earlier.encode()))
    assert before - 1e-6 <= first <= time.time()  # stamped to the microsecond
    assert restored is not None and restored <= first
    lines = [line for line in mine.splitlines() if '"partitions restored"' in line]
    assert len(lines) == 1 and abs(restored - _stamp(lines[0])) < 1e-6


def test_without_a_restore_line_only_the_first_read_is_known(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text, before = worker_lines(monkeypatch, restored=False)
    log = tmp_path / "worker.log"
    log.write_text(text)
    first, restored = start_times(log, 0)
    assert restored is None and first >= before - 1e-6


def test_a_run_that_logged_no_status_is_an_error_not_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    earlier, _ = worker_lines(monkeypatch)
    mine, _ = worker_lines(monkeypatch, statuses=0)
    log = tmp_path / "worker.log"
    log.write_text(earlier + mine)
    with pytest.raises(RuntimeError, match="no status event"):
        start_times(log, len(earlier.encode()))


def _stamp(line: str) -> float:
    fields: dict[str, Any] = json.loads(line)
    return datetime.fromisoformat(fields["timestamp"]).timestamp()
