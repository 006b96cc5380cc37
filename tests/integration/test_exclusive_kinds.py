"""Exclusive job kinds on the real broker: Elastic Path billing and payment runs, one of
each kind at a time per store, sent by two workers. Each kind has one home partition:
runs that arrive elsewhere are forwarded there, and its owner starts them one after the
other. The strict simulator refuses (409) any run that would overlap: none is refused,
none overlaps, and every run succeeds once."""

from __future__ import annotations

import itertools
import signal
import subprocess
import uuid
from pathlib import Path

from tests.conftest import make_settings, running
from tests.vendors.test_elasticpath import ep_connection
from worker.config import PolicyConfig, TopicSettings
from worker.runtime import Worker
from worker.simulators.base import SimJob, Timing
from worker.simulators.elasticpath import ElasticPathSimulator
from worker.testing import (
    OutputReader,
    Publisher,
    connections_json,
    elasticpath_request,
    eventually,
    spawn_worker,
    stop_processes,
    terminal,
    worker_env,
)

QUICK = PolicyConfig(first_poll_s=0.1, poll_initial_s=0.1, poll_multiplier=1.0, poll_max_s=0.1, retry_initial_s=0.1)
RUNS = 5  # of each exclusive kind


def forwarded(worker: Worker) -> float:
    return worker.metrics.registry.get_sample_value("export_worker_requests_total", {"outcome": "forwarded"}) or 0.0


def overlaps(jobs: list[SimJob]) -> list[tuple[str, str]]:
    spans = sorted((j.created, j.created + sum(j.durations), j.match_key) for j in jobs)
    return [(a[2], b[2]) for a, b in itertools.pairwise(spans) if b[0] < a[1]]


class TestExclusiveKinds:
    async def test_runs_of_one_kind_go_one_at_a_time_without_a_refusal(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        topics = TopicSettings(partitions=4).prefixed(f"t{uuid.uuid4().hex[:10]}.")
        sim = ElasticPathSimulator(timing=Timing(stages=(0.2, 0.2)), seed=8)
        await sim.start()
        conn = {"ep": ep_connection(sim.base_url, policy=QUICK)}
        one = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "a"), connections=conn)
        two = Worker(make_settings(kafka_bootstrap, topics, tmp_path / "b"), connections=conn)
        settings = make_settings(kafka_bootstrap, topics, tmp_path)
        runs = [(f"{kind[:3].lower()}-{i}-{uuid.uuid4().hex[:4]}", kind) for i in range(RUNS) for kind in
                ("BILLING_RUN", "PAYMENT_RUN")]  # fmt: skip
        taxes = [(f"tax-{i}-{uuid.uuid4().hex[:4]}", "TAX_RUN") for i in range(3)]
        try:
            async with running(one), running(two), OutputReader(settings) as reader:
                await eventually(lambda: len(one.partitions) == len(two.partitions) == 2, timeout=60, what="split")
                async with Publisher(settings) as pub:
                    for request_id, kind in runs + taxes:
                        await pub.send(elasticpath_request(request_id, kind))
                    await pub.flush()
                ids = [r for r, _ in runs + taxes]
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="every run ended")
            assert all(out.statuses(r)[-1] == "SUCCEEDED" for r in ids), {r: out.statuses(r) for r in ids}
            assert sim.busy_refused == 0
            by_ref = {job.match_key: job for job in sim.jobs.values()}
            assert sorted(by_ref) == sorted(ids)  # each run created once
            for kind in ("BILLING_RUN", "PAYMENT_RUN"):
                jobs = [by_ref[r] for r, k in runs if k == kind]
                assert overlaps(jobs) == [], kind
            # Tax runs are not exclusive: they ran alongside.
            assert forwarded(one) + forwarded(two) > 0  # runs arrived outside their home and were forwarded
        finally:
            await sim.stop()


class TestHolderKilled:
    async def test_a_sigkilled_home_owner_hands_the_queue_and_the_running_job_over(
        self, kafka_bootstrap: str, tmp_path: Path
    ) -> None:
        """The worker running a billing run is SIGKILLed with more queued behind it: the
        next owner of the home partition finds the run at the vendor from its state,
        waits for it, and starts the rest one at a time. No lease had to expire."""
        topics = TopicSettings(partitions=3).prefixed(f"x{uuid.uuid4().hex[:8]}.")
        settings = make_settings(kafka_bootstrap, topics, tmp_path, commit_interval_ms=50)
        sim = ElasticPathSimulator(timing=Timing(stages=(1.0, 1.0)), seed=9)
        await sim.start()
        conn_file = tmp_path / "connections.json"
        conn_file.write_text(connections_json({"ep": ep_connection(sim.base_url, policy=QUICK)}))
        procs: list[subprocess.Popen[bytes]] = []
        ids = [f"kill-bil-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        try:
            first = spawn_worker(
                worker_env(settings, connections_file=str(conn_file), instance_id="a"), tmp_path / "a.log"
            )
            procs.append(first)
            async with Publisher(settings) as pub, OutputReader(settings) as reader:
                for request_id in ids:
                    await pub.send(elasticpath_request(request_id, "BILLING_RUN"))
                await pub.flush()
                await eventually(lambda: len(sim.jobs) == 1, timeout=60, what="the first run at the vendor")
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                assert len(sim.jobs) == 1, "the kill came too late to prove anything"
                second = spawn_worker(
                    worker_env(settings, connections_file=str(conn_file), instance_id="b"), tmp_path / "b.log"
                )
                procs.append(second)
                out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120, what="every run ended")
            assert all(out.statuses(r)[-1] == "SUCCEEDED" for r in ids), {r: out.statuses(r) for r in ids}
            assert sim.busy_refused == 0
            assert overlaps(list(sim.jobs.values())) == []
            assert sorted(j.match_key for j in sim.jobs.values()) == sorted(ids)
        finally:
            stop_processes(procs)
            await sim.stop()
