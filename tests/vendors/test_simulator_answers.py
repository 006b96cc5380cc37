"""The simulators remember, per job, whether the answer to the call that created it
reached the client: what the chaos run uses to tell why a vendor job exists twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.vendors.test_elasticpath import ep_connection, job_spec
from worker.errors import MalformedAnswer, VendorUnavailable
from worker.result_store import FileResultStore
from worker.simulators.elasticpath import ElasticPathSimulator
from worker.testing import eventually
from worker.vendors import HttpClient, build_adapter
from worker.vendors.elasticpath import ElasticPathAdapter


@pytest.fixture
async def sim() -> AsyncIterator[ElasticPathSimulator]:
    simulator = ElasticPathSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


def adapter_for(sim: ElasticPathSimulator, session: HttpClient, timeout_s: float, results: Path) -> ElasticPathAdapter:
    conn = ep_connection(sim.base_url, timeout_s=timeout_s)
    adapter = build_adapter("ep", conn, session, result_store=FileResultStore(results))
    assert isinstance(adapter, ElasticPathAdapter)
    return adapter


class TestAnswerMarks:
    async def test_an_answered_submit_is_stamped_and_not_lost(
        self, sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path
    ) -> None:
        """A job whose answer reached the client has its arrival and answer times, no loss mark."""
        await adapter_for(sim, session, 5.0, tmp_path).submit(job_spec("req-ok", "TAX_RUN"))
        (job,) = sim.jobs.values()
        assert job.received is not None and job.answered is not None
        assert job.received <= job.answered
        assert job.answer_lost is None
        assert job.client == "export-worker/test"  # the caller's User-Agent

    async def test_a_dropped_answer_is_marked(
        self, sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path
    ) -> None:
        """lost_submit creates the job and drops the connection: the job says so."""
        sim.faults.plan.next_lost_submit = 1
        with pytest.raises(VendorUnavailable):
            await adapter_for(sim, session, 5.0, tmp_path).submit(job_spec("req-dropped", "TAX_RUN"))
        (job,) = sim.jobs.values()
        assert job.answer_lost == "dropped"

    async def test_an_answer_held_past_the_client_timeout_is_marked(
        self, sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path
    ) -> None:
        """A held answer the client stopped waiting for marks the job it created client_gone."""
        adapter = adapter_for(sim, session, 0.5, tmp_path)
        await adapter.submit(job_spec("req-warm", "TAX_RUN"))  # takes the token first
        sim.faults.plan.update({"rate_timeout": 1.0, "timeout_s": 1.0})
        with pytest.raises(VendorUnavailable):
            await adapter.submit(job_spec("req-held", "TAX_RUN"))

        async with aiohttp.ClientSession() as probe:  # the held call ends after the client left
            sim.faults.plan.rate_timeout = 0.0

            async def held_job_answered() -> bool:
                async with probe.get(f"{sim.base_url}/_sim/jobs") as answer:
                    jobs = await answer.json()
                return any(j["match_key"] == "req-held" and j["answered"] is not None for j in jobs)

            await eventually(held_job_answered, timeout=10, what="the held submit answered")
        held = next(j for j in sim.jobs.values() if j.match_key == "req-held")
        assert held.answer_lost == "client_gone"
        warm = next(j for j in sim.jobs.values() if j.match_key == "req-warm")
        assert warm.answer_lost is None

    async def test_an_answer_in_the_wrong_content_type_is_marked_garbled(
        self, sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path
    ) -> None:
        """wrong_content_type runs the call (the job exists) but its answer cannot be read."""
        adapter = adapter_for(sim, session, 5.0, tmp_path)
        await adapter.submit(job_spec("req-warm", "TAX_RUN"))  # takes the token first
        sim.faults.plan.update({"next_wrong_content_type": 1, "hostile_on": "submit"})
        with pytest.raises(MalformedAnswer):
            await adapter.submit(job_spec("req-garbled", "TAX_RUN"))
        garbled = next(j for j in sim.jobs.values() if j.match_key == "req-garbled")
        assert garbled.answer_lost == "garbled"
