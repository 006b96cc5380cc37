"""Intake backpressure on the real broker: a worker with a small open-jobs limit and a
vendor that keeps every job running stops reading requests at the limit (overshooting by
at most one consumed batch), stays ready, keeps polling, and once the vendor lets the
jobs finish reads the rest: every request succeeds exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import itron_connection, make_settings, running
from worker.config import TopicSettings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal

MAX_OPEN = 10
BATCH = 5
REQUESTS = 60
HELD = Timing(stages=(3600.0, 3600.0, 3600.0))  # every job stays running until released
FAST = Timing(stages=(0.05, 0.05, 0.05))


def polls_per_job(sim: ItronSimulator) -> Counter[str]:
    polls: Counter[str] = Counter()
    for request in sim.requests:
        if request["method"] == "GET" and "/batch-request/" in request["path"]:
            polls[request["path"].rsplit("/", 1)[1]] += 1
    return polls


def release(sim: ItronSimulator) -> None:
    """Let every job finish: those created so far at once, later ones quickly."""
    sim.timing = FAST
    for job in sim.jobs.values():
        job.durations = (0.0, 0.0, 0.0)


class TestIntakeBackpressure:
    async def test_intake_pauses_at_the_limit_and_every_request_still_succeeds_once(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path
    ) -> None:
        settings = make_settings(
            kafka_bootstrap, topics, tmp_path, max_open_jobs=MAX_OPEN, intake_low_water=0.5, consume_batch=BATCH
        )
        sim = ItronSimulator(timing=HELD, seed=11)
        await sim.start()
        ids = [f"bp-{i}" for i in range(REQUESTS)]
        worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)})
        # The open jobs right after each batch is taken: the most a turn ever holds
        # (later in the turn jobs only finish; timers and answers start none).
        after_intake: list[int] = []
        take = worker.intake.take

        async def counting_take(messages: list[Any]) -> dict[int, int]:
            rewind = await take(messages)
            after_intake.append(worker.partitions.open_jobs())
            return rewind

        worker.intake.take = counting_take  # type: ignore[method-assign]
        try:
            async with Publisher(settings) as pub:  # the whole backlog is there before the worker starts
                for request_id in ids:
                    await pub.send(itron_request(request_id))
                await pub.flush()
            with capture_logs() as logs:
                async with running(worker), OutputReader(settings) as reader:
                    await eventually(lambda: worker.gate.closed, timeout=30, what="intake paused")

                    # Held: the jobs it took keep being polled, and nothing new is read.
                    def every_job_polled_again() -> bool:
                        polls = polls_per_job(sim)
                        return bool(sim.jobs) and all(polls[job_id] >= 4 for job_id in sim.jobs)

                    await eventually(every_job_polled_again, timeout=30, what="held jobs polled 4 times each")
                    held = len(sim.jobs)
                    assert MAX_OPEN <= held <= MAX_OPEN + BATCH - 1
                    assert worker.partitions.open_jobs() == held and worker.gate.closed
                    assert worker.readiness()[0], worker.readiness()
                    assert worker.metrics.registry.get_sample_value("export_worker_intake_paused") == 1

                    def waiting() -> float:  # the backlog left, as the lag gauge sees it
                        return sum(
                            worker.metrics.registry.get_sample_value("export_worker_consumer_lag", {"partition": p})
                            or 0
                            for p in map(str, range(topics.partitions))
                        )

                    # Measured every few seconds, on the partitions read from so far (one
                    # nothing was read from has no position yet, hence no sample).
                    await eventually(lambda: waiting() > 0, timeout=20, what="lag of the unread requests")
                    assert len(sim.jobs) == held  # still: the wait above gave it time to read more

                    release(sim)
                    out = await reader.wait_for(lambda o: terminal(o, ids), timeout=120)
                    await eventually(lambda: not worker.gate.closed, timeout=10, what="intake open at the end")
                    assert worker.readiness()[0], worker.readiness()
        finally:
            await sim.stop()

        assert max(after_intake) <= MAX_OPEN + BATCH - 1, max(after_intake)
        for request_id in ids:
            statuses = out.statuses(request_id)
            assert statuses.count("SUCCEEDED") == 1 and statuses[-1] == "SUCCEEDED", (request_id, statuses)
            assert statuses.count("ACCEPTED") == 1, (request_id, statuses)
            assert len(out.files_for(request_id)) == 1, request_id
        assert len(sim.jobs) == REQUESTS  # one vendor job per request: no request read twice
        events = [e["event"] for e in logs]
        pauses, resumes = events.count("intake paused"), events.count("intake resumed")
        assert pauses >= 1 and resumes == pauses
        paused_line = next(e for e in logs if e["event"] == "intake paused")
        assert paused_line["limit"] == MAX_OPEN and MAX_OPEN <= paused_line["open_jobs"] <= MAX_OPEN + BATCH - 1
        assert worker.metrics.registry.get_sample_value("export_worker_intake_pauses_total") == pauses
        assert worker.metrics.registry.get_sample_value("export_worker_intake_paused") == 0
        assert worker.metrics.registry.get_sample_value("export_worker_open_jobs_limit") == MAX_OPEN
