"""``export-worker budgets``: the fleet's numbers from the connections file, each worker's
share from the group's assignment, and the blocks in force from the control topic."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import itron_connection
from tests.ops.conftest import cli, worker_running, write_connections
from worker.config import Settings
from worker.control import ControlFollower
from worker.simulators.itron import ItronSimulator
from worker.testing import eventually


class TestBudgetsCommand:
    async def test_shows_the_fleet_budget_each_workers_share_and_a_block(
        self, settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
    ) -> None:
        conf = itron_connection(itron_sim.base_url, rate_per_s=30, max_concurrency=6)
        connections = str(write_connections(tmp_path / "connections.json", {"itron": conf}))
        async with worker_running(settings, itron_sim) as worker:
            follower = ControlFollower(settings, lambda _state: None)
            until = int(time.time() * 1000) + 120_000
            follower.publish_block("itron", until, "rate_limited: the vendor asked to wait 120 s")
            await follower.stop()

            async def report() -> dict[str, object]:
                result = await cli(settings, "budgets", "--output", "json", EXPORT_WORKER_CONNECTIONS_FILE=connections)
                assert result.exit_code == 0, result.output
                return dict(json.loads(result.stdout))

            async def blocked_and_assigned() -> bool:
                found = await report()
                return bool(found["connections"][0]["blocked_until"]) and bool(found["shares"])  # type: ignore[index]

            await eventually(blocked_and_assigned, timeout=30, what="the block and the assignment listed")
            found = await report()
            assert found["mode"] == "fleet" and found["partitions"] == settings.topics.partitions
            (row,) = found["connections"]  # type: ignore[misc]
            assert (row["connection"], row["rate_per_s"], row["max_concurrency"]) == ("itron", 30, 6)
            (share,) = found["shares"]  # type: ignore[misc]
            # One worker owns every partition: the whole budget is its share.
            assert share["worker"] == settings.instance_id and share["partitions"] == settings.topics.partitions
            assert (share["rate_per_s"], share["max_concurrency"]) == (30, 6)
            # The block reached the worker too.
            await eventually(
                lambda: worker.dispatcher.lanes["itron"].limiter.blocked_until > worker.clock.monotonic() + 60,
                timeout=10,
                what="the block applied",
            )

    async def test_without_a_connections_file_it_says_what_it_needs(self, settings: Settings) -> None:
        result = await cli(settings, "budgets")
        assert result.exit_code == 2 and "EXPORT_WORKER_CONNECTIONS_FILE" in result.output
