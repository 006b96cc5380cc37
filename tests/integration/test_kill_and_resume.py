"""Crash safety with real processes: a worker killed with SIGKILL mid-flight is replaced
by another; every request still ends once, with gapless status sequences, one file each,
and any vendor job created twice announced as possible_duplicate."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections import Counter
from pathlib import Path

from tests.conftest import itron_connection, make_settings
from worker.config import TopicSettings
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import (
    OutputReader,
    Publisher,
    connections_json,
    itron_request,
    spawn_worker,
    stop_processes,
    terminal,
    worker_env,
)
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id


class TestKillAndResume:
    async def test_sigkilled_worker_is_replaced_without_loss_or_duplicate_events(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        topics = TopicSettings(partitions=3).prefixed(f"k{uuid.uuid4().hex[:8]}.")
        settings = make_settings(kafka_bootstrap, topics, tmp_path, commit_interval_ms=50)
        sim = ItronSimulator(timing=Timing(stages=(0.4, 0.4, 0.4)), seed=11)
        await sim.start()
        conn_file = tmp_path / "connections.json"
        conn_file.write_text(connections_json({"itron": itron_connection(sim.base_url)}))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            first = spawn_worker(
                worker_env(settings, connections_file=str(conn_file), instance_id="a"), tmp_path / "a.log"
            )
            procs.append(first)
            ids = [f"kr-{i}" for i in range(40)]
            async with Publisher(settings) as pub, OutputReader(settings) as reader:
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                # Kill while a good part of the jobs is submitted but few are finished.
                await reader.wait_for(
                    lambda o: sum("SUBMITTED" in o.statuses(r) for r in ids) >= 10, timeout=60, what="10 submitted"
                )
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                before = await reader.read()
                finished_before = sum(terminal(before, [r]) for r in ids)
                assert finished_before < len(ids), "the kill came too late to prove anything"

                second = spawn_worker(
                    worker_env(settings, connections_file=str(conn_file), instance_id="b"), tmp_path / "b.log"
                )
                procs.append(second)
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=90, what="all terminal after takeover")

            for r in ids:
                events = out.events(r)
                assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), (r, events)
                assert events[-1]["status"] == "SUCCEEDED", (r, [e["status"] for e in events])
                originals = [f for f in out.files_for(r) if not f["reannounced"]]
                assert len(originals) == 1, r
            created = Counter(j.match_key for j in sim.jobs.values())
            for r in ids:
                jobs = created[correlation_id(JobSpec(r, "acme", "itron", {}))]
                assert jobs >= 1
                if jobs > 1:  # a vendor job created twice is never silent
                    assert any(e["possible_duplicate"] for e in out.events(r)), r
        finally:
            stop_processes(procs)
            await sim.stop()
        assert procs[1].returncode == 0, "the replacement worker must stop cleanly on SIGTERM"
