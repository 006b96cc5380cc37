"""``export-worker budgets``: the fleet's numbers from the connections file, each worker's
share from the group's assignment, and the blocks in force from the control topic."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import itron_connection
from tests.ops.conftest import cli, worker_running, write_connections
from tests.vendors.test_elasticpath import ep_connection
from worker.config import Settings
from worker.control import ControlFollower
from worker.exclusive import home_partition
from worker.simulators.itron import ItronSimulator
from worker.testing import eventually


class TestBudgetsCommand:
    async def test_shows_the_fleet_budget_each_workers_share_and_a_block(
        self, settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
    ) -> None:
        conf = itron_connection(itron_sim.base_url, rate_per_s=30, max_concurrency=6)
        ep = ep_connection("http://127.0.0.1:9", rate_per_s=10, max_concurrency=2)
        connections = str(write_connections(tmp_path / "connections.json", {"itron": conf, "ep": ep}))
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
                itron = next(r for r in found["connections"] if r["connection"] == "itron")  # type: ignore[attr-defined]
                return bool(itron["blocked_until"]) and bool(found["shares"])

            await eventually(blocked_and_assigned, timeout=30, what="the block and the assignment listed")
            found = await report()
            assert found["mode"] == "fleet" and found["partitions"] == settings.topics.partitions
            rows = {r["connection"]: r for r in found["connections"]}  # type: ignore[attr-defined]
            assert (rows["itron"]["rate_per_s"], rows["itron"]["max_concurrency"]) == (30, 6)
            assert rows["ep"]["blocked_until"] == ""
            share = next(s for s in found["shares"] if s["connection"] == "itron")  # type: ignore[attr-defined]
            # One worker owns every partition: the whole budget is its share.
            assert share["worker"] == settings.instance_id and share["partitions"] == settings.topics.partitions
            assert (share["rate_per_s"], share["max_concurrency"]) == (30, 6)
            # Where each exclusive kind queues: its home partition, owned by the one worker.
            partitions = settings.topics.partitions
            assert found["exclusive"] == [
                {"connection": "ep", "kind": kind, "home_partition": home_partition("ep", kind, partitions),
                 "worker": settings.instance_id}
                for kind in ("BILLING_RUN", "PAYMENT_RUN")
            ]  # fmt: skip
            # The block reached the worker too.
            await eventually(
                lambda: worker.dispatcher.lanes["itron"].limiter.blocked_until > worker.clock.monotonic() + 60,
                timeout=10,
                what="the block applied",
            )

    async def test_without_a_connections_file_it_says_what_it_needs(self, settings: Settings) -> None:
        result = await cli(settings, "budgets")
        assert result.exit_code == 2 and "EXPORT_WORKER_CONNECTIONS_FILE" in result.output
