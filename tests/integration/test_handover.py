"""Handing partitions over: a submit whose intent is written but whose call has not
started is withdrawn with the revoke's commit, so the new owner submits it as new (no
reconcile, no duplicate flag) instead of guessing whether it was sent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.conftest import itron_connection, make_settings, running
from worker.config import Settings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.faults import FaultPlan
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, itron_request, terminal
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id


class TestHandover:
    async def test_submits_that_never_started_are_withdrawn_not_flagged(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        # One call at a time, each slow: submits queue behind it with their intents written.
        sim = ItronSimulator(timing=Timing(stages=(0.2, 0.2, 0.2)), faults=FaultPlan(slow_s=0.15), seed=4)
        await sim.start()
        conn = {"itron": itron_connection(sim.base_url, max_concurrency=1)}
        # Same topics, same group: a second member of the fleet.
        joiner = Worker(make_settings(settings.kafka_bootstrap, settings.topics, tmp_path), connections=conn)
        ids = [f"ho-{i}" for i in range(36)]
        try:
            async with (
                Publisher(settings) as pub,
                OutputReader(settings) as reader,
                running(Worker(settings, connections=conn)),
            ):
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                await reader.wait_for(
                    lambda o: sum("SUBMITTED" in o.statuses(r) for r in ids) >= 4, timeout=60, what="4 submitted"
                )
                async with running(joiner):
                    out = await reader.wait_for(lambda o: terminal(o, ids), timeout=180, what="all terminal")
                    assert joiner.partitions, "the second worker took no partitions: no handover happened"
        finally:
            await sim.stop()
        created = Counter(j.match_key for j in sim.jobs.values())
        for r in ids:
            events = out.events(r)
            assert events[-1]["status"] == "SUCCEEDED", (r, events)
            assert created[correlation_id(JobSpec(r, "acme", "itron", {}))] == 1, r
            assert not any(e["possible_duplicate"] for e in events), r
