"""``pause`` drains a connection: nothing new is submitted, open jobs finish; ``resume``
submits what waited."""

from __future__ import annotations

import json

from tests.ops.conftest import cli, rid, submits, worker_running
from worker.config import Settings
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal


class TestPause:
    async def test_pause_drains_and_resume_submits_the_parked_requests(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        running, waiting = rid("open"), rid("parked")
        itron_sim.timing = Timing(stages=(2.0, 2.0, 2.0))  # the open job takes about 6 s
        async with (
            worker_running(settings, itron_sim) as worker,
            Publisher(settings) as pub,
            OutputReader(settings) as reader,
        ):
            await pub.send(itron_request(running))
            await pub.flush()
            await reader.wait_for(lambda o: "SUBMITTED" in o.statuses(running), what="submitted")

            result = await cli(settings, "pause", "itron", "--reason", "vendor maintenance")
            assert result.exit_code == 0, result.output
            assert "connection:itron paused" in result.stderr
            await eventually(lambda: worker.dispatcher.lanes["itron"].paused, what="pause applied")
            assert not terminal(await reader.read(), [running])  # still open when the pause took effect
            listed = await cli(settings, "paused", "--output", "json")
            (pause,) = json.loads(listed.stdout)
            assert (pause["kind"], pause["name"], pause["reason"]) == ("connection", "itron", "vendor maintenance")
            assert pause["by"] and pause["since"].endswith("Z")

            posts = submits(itron_sim)
            await pub.send(itron_request(waiting))
            await pub.flush()
            out = await reader.wait_for(
                lambda o: terminal(o, [running]) and "ACCEPTED" in o.statuses(waiting), what="drained"
            )
            # The open job finished while paused; the new one was accepted and nothing was submitted.
            assert out.statuses(running)[-1] == "SUCCEEDED"
            assert out.statuses(waiting) == ["ACCEPTED"]
            assert submits(itron_sim) == posts

            result = await cli(settings, "resume", "itron")
            assert result.exit_code == 0, result.output
            out = await reader.wait_for(lambda o: terminal(o, [waiting]), what="parked request finished")
            assert out.statuses(waiting)[-1] == "SUCCEEDED"
            assert submits(itron_sim) == posts + 1
            listed = await cli(settings, "paused", "--output", "json")
            assert json.loads(listed.stdout) == []

    async def test_a_vendor_pause_covers_its_connections(self, settings: Settings, itron_sim: ItronSimulator) -> None:
        async with worker_running(settings, itron_sim, "itron-a", "itron-b") as worker:
            result = await cli(settings, "pause", "itron", "--vendor")
            assert result.exit_code == 0, result.output
            await eventually(
                lambda: all(lane.paused for lane in worker.dispatcher.lanes.values()), what="both connections paused"
            )
            table = await cli(settings, "paused")
            assert "vendor" in table.stdout and "itron" in table.stdout
            await cli(settings, "resume", "itron", "--vendor")
            await eventually(lambda: not any(lane.paused for lane in worker.dispatcher.lanes.values()), what="resumed")
