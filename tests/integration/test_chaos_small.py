"""A small chaos run inside `make test` (the full one is `make chaos`): all four vendors,
two worker processes SIGKILLed every few seconds, the broker SIGKILLed once, faults
injected by the simulators; nothing may be lost, repeated or unflagged,
no vendor job may be created twice for a reason other than a lost answer or a kill, and
no request may be FAILED unless its vendor job failed."""

from __future__ import annotations

import os
from pathlib import Path

from tests.chaos import ChaosConfig, run_chaos


class TestSmallChaos:
    async def test_kills_and_faults_lose_nothing_and_flag_every_duplicate(self, tmp_path: Path) -> None:
        external = os.environ.get("KAFKA_BOOTSTRAP")
        cfg = ChaosConfig(
            requests=120,
            workers=2,
            partitions=4,
            seed=7,
            kill_every_s=(3.0, 5.0),
            max_kills=5,
            stages_s=(1.0, 1.0, 1.0),
            broker_restart=external is None,
            deadline_s=300,
            workdir=tmp_path,
        )
        lines: list[str] = []
        result = await run_chaos(cfg, bootstrap=external, say=lines.append)
        assert result.kills >= 2, lines
        assert result.lost == 0, result.problems[:10]
        assert result.duplicate_events == 0, result.problems[:10]
        assert result.out_of_order == 0, result.problems[:10]
        assert result.flagged == result.duplicate_vendor_jobs, result.problems[:10]
        assert result.duplicates_by_cause["other"] == 0, result.problems[:10]
        assert sum(result.duplicates_by_cause.values()) == result.duplicate_vendor_jobs
        assert result.false_failed == 0, result.problems[:10]
        assert sum(result.by_status.values()) == 120
