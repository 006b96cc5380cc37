"""One request travels export.requests -> Itron (simulated) -> export.status + export.files."""

from __future__ import annotations

from typing import Any

from tests.conftest import itron_connection, running
from worker.config import Settings
from worker.runtime import Worker
from worker.testing import OutputReader, Publisher, itron_request, terminal


class TestHappyPath:
    async def test_request_reaches_succeeded_with_one_file(self, settings: Settings, itron_sim: Any) -> None:
        """A valid Itron request is accepted, submitted, polled to Success, and announced once."""
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request("req-1"))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ["req-1"]), timeout=30)
        events = out.events("req-1")
        assert [e["status"] for e in events][:2] == ["ACCEPTED", "SUBMITTED"]
        assert events[-1]["status"] == "SUCCEEDED"
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        files = out.files_for("req-1")
        assert len(files) == 1
        assert files[0]["url"].startswith(itron_sim.base_url + "/raw/")
        assert files[0]["expires_at"] is not None
        assert files[0]["vendor_job_id"] == events[-1]["vendor_job_id"]
