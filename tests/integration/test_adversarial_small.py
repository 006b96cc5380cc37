"""A small adversarial run inside `make test` (the full one runs in `make chaos`): two
worker processes fed normal, fuzzed and poison records and hostile vendor answers while
partitions move right after a burst of submits; every normal request must succeed, every
other one end, every poison record get its dead letter, and no worker may die."""

from __future__ import annotations

from pathlib import Path

from tests.adversarial import AdversarialConfig, run_adversarial


class TestSmallAdversarial:
    async def test_poison_fuzz_and_hostile_vendors_end_every_request_and_stop_no_worker(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Normal requests all SUCCEED; fuzzed and hostile ones end; poison is dead-lettered with its reason."""
        cfg = AdversarialConfig(
            normal=40, fuzzed=40, hostile=20, seed=1, partitions=4, deadline_s=150, workdir=tmp_path
        )
        lines: list[str] = []
        result = await run_adversarial(cfg, bootstrap=kafka_bootstrap, say=lines.append)
        assert result.normal_succeeded == result.normal == 40, result.problems[:10]
        assert result.poison_dead_lettered == result.poison == 6, result.problems[:10]
        assert result.fuzzed_ended == result.fuzzed - result.fuzzed_skipped, result.problems[:10]
        assert result.fuzzed_skipped < result.fuzzed
        assert result.hostile_ended == result.hostile == 20, result.problems[:10]
        assert result.crashes == 0, result.problems[:10]
        assert result.duplicate_events == 0 and result.out_of_order == 0, result.problems[:10]
        assert result.membership_changes >= 4, lines
        assert result.ok, (result.line(), result.problems[:10])
