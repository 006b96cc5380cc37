"""A hostile vendor against the real worker and broker: the answer limits set in the
settings (EXPORT_WORKER_MAX_RETRY_AFTER_S, EXPORT_WORKER_MAX_ANSWER_BYTES) reach every
call, and no answer stops the loop or parks a job for ever.

One worker runs for the whole module; every test uses its own request ids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.conftest import itron_connection, make_settings, running
from worker.config import Settings, TopicSettings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import Output, OutputReader, Publisher, itron_request, terminal

MAX_RETRY_AFTER_S = 1.0
MAX_ANSWER_BYTES = 65_536


@dataclass
class Pipeline:
    settings: Settings
    sim: ItronSimulator
    pub: Publisher
    reader: OutputReader
    worker: Worker

    async def run(self, request_id: str, timeout: float = 30) -> Output:
        await self.pub.send(itron_request(request_id))
        await self.pub.flush()
        return await self.reader.wait_for(
            lambda o: terminal(o, [request_id]), timeout=timeout, what=f"{request_id} terminal"
        )

    def calls(self, outcome: str) -> float:
        """export_worker_vendor_calls with this outcome, over every operation."""
        text = self.worker.metrics.render().decode()
        pattern = rf'export_worker_vendor_calls_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} ([0-9.e+]+)'
        return sum(float(v) for v in re.findall(pattern, text))


@pytest.fixture(scope="module")
async def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    topics = TopicSettings(partitions=3).prefixed(f"h{uuid.uuid4().hex[:8]}.")
    settings = make_settings(
        kafka_bootstrap,
        topics,
        tmp_path_factory.mktemp("results"),
        max_retry_after_s=MAX_RETRY_AFTER_S,
        max_answer_bytes=MAX_ANSWER_BYTES,
    )
    sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=5)
    await sim.start()
    worker = Worker(settings, connections={"itron": itron_connection(sim.base_url, timeout_s=1.0)})
    async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
        yield Pipeline(settings, sim, pub, reader, worker)
    await sim.stop()


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


class TestHostileRetryAfter:
    @pytest.mark.parametrize("raw", ["Infinity", "nan", "-5", "1e309"])
    async def test_a_retry_after_that_is_no_delay_neither_crashes_nor_stalls(
        self, pipeline: Pipeline, raw: str
    ) -> None:
        """``Retry-After: Infinity`` once raised OverflowError in the loop."""
        pipeline.sim.faults.plan.update({"retry_after_raw": raw, "next_429": 1})
        r = rid("inf")
        out = await pipeline.run(r)
        assert out.statuses(r)[-1] == "SUCCEEDED"
        assert pipeline.sim.faults.plan.next_429 == 0

    async def test_a_far_future_date_holds_the_job_and_connection_only_for_the_cap(self, pipeline: Pipeline) -> None:
        """Not 8000 years: EXPORT_WORKER_MAX_RETRY_AFTER_S (1 s here), then on."""
        pipeline.sim.faults.plan.update({"retry_after_raw": "Fri, 31 Dec 9999 23:59:59 GMT", "next_429": 1})
        first = len(pipeline.sim.requests)
        r = rid("far")
        out = await pipeline.run(r, timeout=20)
        assert out.statuses(r)[-1] == "SUCCEEDED"
        api = [q for q in pipeline.sim.requests[first:] if q["path"].startswith("/dpss/")]
        gap = api[1]["at"] - api[0]["at"]
        assert MAX_RETRY_AFTER_S <= gap < MAX_RETRY_AFTER_S + 5


class TestHostileAnswers:
    async def test_an_answer_over_the_configured_size_is_refused_and_retried(self, pipeline: Pipeline) -> None:
        """200 KB is far below the 8 MiB default, but over this worker's 64 KiB."""
        before = pipeline.calls("answer_too_large")
        pipeline.sim.faults.plan.update(
            {"hostile_on": "poll", "next_huge": 1, "huge_bytes": 200_000, "huge_chunked": True}
        )
        r = rid("huge")
        out = await pipeline.run(r)
        assert out.statuses(r)[-1] == "SUCCEEDED"
        assert pipeline.calls("answer_too_large") == before + 1

    async def test_a_vendor_that_never_answers_costs_one_timeout(self, pipeline: Pipeline) -> None:
        pipeline.sim.faults.plan.update({"hostile_on": "poll", "next_hang": 1})
        r = rid("hang")
        out = await pipeline.run(r)
        assert out.statuses(r)[-1] == "SUCCEEDED"
        assert pipeline.sim.faults.injected.get("hang") == 1
