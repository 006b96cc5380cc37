"""What the store's unit tests share: a log and a clock they move (fixtures: conftest.py)."""

from __future__ import annotations

from worker.store import LogFacts

MIB = 1 << 20
DAY_MS = 86_400_000
NOW = 1_733_000_000_000
LOG = LogFacts(
    cluster_id="cluster-a",
    topic="export.jobs",
    topic_id="4f9c0c0e-1111-2222-3333-444455556666",
    partition=3,
    log_start=0,
    high_watermark=500,
    delete_retention_ms=DAY_MS,
)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now
