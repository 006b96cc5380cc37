"""Graceful shutdown on SIGTERM, and the end of a finished job's record after retention."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.conftest import FAST_POLICY, itron_connection, make_settings, running
from worker.config import Settings, TopicSettings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import (
    OutputReader,
    Publisher,
    connections_json,
    itron_request,
    spawn_worker,
    terminal,
    worker_env,
)


class TestGracefulShutdown:
    async def test_sigterm_finishes_in_flight_calls_commits_and_leaves_in_time(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """Submits in flight at SIGTERM complete and are committed: the next worker
        neither loses them nor has to resubmit (no possible_duplicate)."""
        topics = TopicSettings(partitions=3).prefixed(f"g{uuid.uuid4().hex[:8]}.")
        settings = make_settings(kafka_bootstrap, topics, tmp_path, shutdown_grace_s=12)
        sim = ItronSimulator(timing=Timing(stages=(0.2, 0.2, 0.2)), seed=5)
        await sim.start()
        conn_file = tmp_path / "connections.json"
        conn_file.write_text(connections_json({"itron": itron_connection(sim.base_url)}))
        env = worker_env(settings, connections_file=str(conn_file), instance_id="g1")
        ids = [f"gs-{i}" for i in range(12)]
        proc = spawn_worker(env)
        successor: subprocess.Popen[bytes] | None = None
        try:
            async with Publisher(settings) as pub, OutputReader(settings) as reader:
                await reader.wait_for(lambda o: True, timeout=5)
                sim.faults.plan.slow_s = 2.0  # every vendor answer now takes 2 s
                for r in ids:
                    await pub.send(itron_request(r))
                await pub.flush()
                await reader.wait_for(lambda o: all("ACCEPTED" in o.statuses(r) for r in ids), timeout=30)
                await _until(
                    lambda: any(q["path"].endswith("/batch-request") for q in sim.requests), what="a submit in flight"
                )
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                # The simulator shares this event loop: wait in a thread so it keeps answering.
                code = await asyncio.to_thread(proc.wait, 30)
                took = time.monotonic() - started
                assert code == 0
                assert took < settings.shutdown_grace_s
                sim.faults.plan.slow_s = 0.0
                successor = spawn_worker(worker_env(settings, connections_file=str(conn_file), instance_id="g2"))
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=60)
            for r in ids:
                events = out.events(r)
                assert events[-1]["status"] == "SUCCEEDED"
                assert not any(e["possible_duplicate"] for e in events), r
                assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
            assert len(sim.jobs) == len(ids)  # no submit was repeated
        finally:
            for p in (proc, successor):
                if p is not None and p.poll() is None:
                    p.kill()
            await sim.stop()


async def _until(check: object, *, what: str, timeout: float = 20.0) -> None:
    from worker.testing import eventually

    await eventually(check, timeout=timeout, what=what)  # type: ignore[arg-type]


class TestRetention:
    async def test_finished_job_record_is_tombstoned_after_retention(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        short = FAST_POLICY.model_copy(update={"retention_s": 1.0})
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url, policy=short)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request("ret-1"))
            await pub.flush()
            await reader.wait_for(lambda o: terminal(o, ["ret-1"]))
            out = await reader.wait_for(lambda o: "ret-1" in o.jobs and o.jobs["ret-1"] is None, timeout=20)
            assert all("ret-1" not in p.jobs for p in worker.partitions.values())
        assert out.jobs["ret-1"] is None
