"""Once the vendor accepted a job, its adapter reads only ``poll_view(job)``: every call
after acceptance (each poll through to the end, collecting the result, cancelling) is made
twice against the vendor's simulator, with the full body and with the view, and must send
the same requests and get the same answers. A view missing a field the calls read makes
the comparison fail.

Simulated jobs are frozen (hour-long stages) and moved on stage by stage, so both calls
of a pair meet the job in the same state."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.vendors.conftest import token_connection
from tests.vendors.poll_view_check import as_stored, same_with_view
from worker.engine.model import CancelAnswered, PollAnswered, Status
from worker.result_store import FileResultStore
from worker.simulators.base import Simulator, Timing
from worker.simulators.elasticpath import ElasticPathSimulator
from worker.simulators.itron import ItronSimulator
from worker.simulators.opengate import OpenGateSimulator
from worker.simulators.unicommerce import UnicommerceSimulator
from worker.vendors import HttpClient, JobSpec, VendorAdapter, build_adapter
from worker.vendors.elasticpath import ElasticPathAdapter
from worker.vendors.itron import ItronAdapter
from worker.vendors.opengate import OpenGateAdapter
from worker.vendors.unicommerce import UnicommerceAdapter

S = TypeVar("S", bound=Simulator)

HOUR = 3600.0
FROZEN = Timing(stages=(HOUR, HOUR, HOUR))
MAX_POLLS = 10


def without(view: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in view, f"{name} is not in the view {view}: nothing to break"
    return {key: value for key, value in view.items() if key != name}


def next_stage(sim: Simulator, job_id: str) -> None:
    """Move a simulated job (whose stages run on its creation time) into its next stage."""
    job = sim.jobs[job_id]
    job.created -= job.durations[job.stage(time.monotonic())]


async def poll_to_end(sim: Simulator, adapter: VendorAdapter, spec: JobSpec, job_id: str) -> list[PollAnswered]:
    """Every poll of the job, each made with the full body and with the view, until it
    ends; the job moves on a stage after each pair."""
    answers: list[PollAnswered] = []
    for _ in range(MAX_POLLS):
        answer = await same_with_view(sim, adapter, spec, lambda s: adapter.poll(s, job_id))
        assert isinstance(answer, PollAnswered), answer
        answers.append(answer)
        if answer.status.terminal:
            return answers
        if isinstance(sim, OpenGateSimulator):
            opengate_later(sim, job_id, HOUR)
        else:
            next_stage(sim, job_id)
    raise AssertionError(f"not terminal after {MAX_POLLS} polls: {[a.vendor_status for a in answers]}")


def statuses(answers: list[PollAnswered]) -> list[str | None]:
    return [a.vendor_status for a in answers]


@pytest.fixture
def store(tmp_path: Path) -> FileResultStore:
    return FileResultStore(tmp_path / "results")


# ---- Itron ---------------------------------------------------------------------------

# Not the connection's subscription (7f7f2d8e-...): the request's own, so its read shows.
REQUEST_SUBSCRIPTION = "0b0b0b0b-1c1c-4d4d-8e8e-2f2f2f2f2f2f"


def itron_job() -> dict[str, Any]:
    """An ItronBatchRequest as the runtime holds it, with the seed's full token list."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    return as_stored(
        {
            "type": "ItronBatchRequest",
            "filetype": "Parquet",
            "tokens": {
                "StartEventDate": today,
                "EndEventDate": today,
                "StartReceivedDateTime": "",
                "EndReceivedDateTime": "",
                "Device": "",
                "ElectronicSerialNumber": "",
                "Meter": "",
                "MeterNumber": "",
                "ServicePoint": "9000053409,9002036306,9000910527,9001640122,",
                "Premises": "",
                "Transformer": "",
                "Feeder": "",
            },
            "is_ohs_request": False,
            "subscription_id": REQUEST_SUBSCRIPTION,
        }
    )


def itron_success_without_format(job_id: str, base_url: str) -> str:
    """A success answer as the seed's field table has it: a DownloadUri, no fileFormat."""
    link = f"{base_url}/raw/{job_id.upper()}/{job_id.upper()}.zip?sv=2018-03-28&sr=b&se=2030-01-01T00:00:00Z&sp=r"
    return json.dumps({"jobId": job_id, "status": "Success", "DownloadUri": link})


@contextlib.asynccontextmanager
async def running(simulator: S) -> AsyncIterator[S]:
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class TestItron:
    @pytest.fixture
    async def sim(self) -> AsyncIterator[ItronSimulator]:
        async with running(ItronSimulator(timing=FROZEN, seed=3)) as simulator:
            yield simulator

    @pytest.fixture
    def adapter(self, sim: ItronSimulator, session: HttpClient) -> ItronAdapter:
        built = build_adapter("itron", token_connection("itron", sim.base_url), session)
        assert isinstance(built, ItronAdapter)
        return built

    async def submitted(self, adapter: ItronAdapter, request_id: str) -> tuple[JobSpec, str]:
        spec = JobSpec(request_id, "acme", "itron", itron_job())
        return spec, (await adapter.submit(spec)).vendor_job_id

    def test_the_view_is_the_subscription_and_the_file_type(self) -> None:
        assert ItronAdapter.poll_view(itron_job()) == {"subscription_id": REQUEST_SUBSCRIPTION, "filetype": "Parquet"}

    async def test_polls_to_success_read_only_the_view(self, sim: ItronSimulator, adapter: ItronAdapter) -> None:
        spec, job_id = await self.submitted(adapter, "req-itron-ok")

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert statuses(answers) == ["New", "Started", "Running", "Success"]
        file = answers[-1].file
        assert file is not None and file.format == "parquet.zip" and file.expires_at_ms is not None
        polls = [r for r in sim.requests if r["method"] == "GET"]
        assert {r["path"] for r in polls} == {
            f"/dpss/api/v1/subscriptions/{REQUEST_SUBSCRIPTION}/batch-request/{job_id}"
        }

    async def test_polls_to_failure_read_only_the_view(self, sim: ItronSimulator, adapter: ItronAdapter) -> None:
        spec, job_id = await self.submitted(adapter, "req-itron-fails")
        sim.jobs[job_id].fails = True

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert answers[-1].status is Status.FAILED

    async def test_a_success_without_file_format_names_the_file_from_the_view(
        self, sim: ItronSimulator, adapter: ItronAdapter
    ) -> None:
        """The file type fallback is read after acceptance: the view must carry it."""
        spec, job_id = await self.submitted(adapter, "req-itron-no-format")
        for _ in range(2):  # one answer for each call of the pair
            sim.answer_next(200, itron_success_without_format(job_id, sim.base_url))

        answer = await same_with_view(sim, adapter, spec, lambda s: adapter.poll(s, job_id))

        assert isinstance(answer, PollAnswered) and answer.file is not None
        assert answer.file.format == "parquet.zip"

    async def test_a_view_without_the_subscription_polls_another_path(
        self, sim: ItronSimulator, adapter: ItronAdapter
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-itron-broken")
        broken = without(adapter.poll_view(spec.job), "subscription_id")

        with pytest.raises(AssertionError):
            await same_with_view(sim, adapter, spec, lambda s: adapter.poll(s, job_id), view=broken)

    async def test_a_view_without_the_file_type_names_the_file_wrongly(
        self, sim: ItronSimulator, adapter: ItronAdapter
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-itron-broken-format")
        broken = without(adapter.poll_view(spec.job), "filetype")
        for _ in range(2):
            sim.answer_next(200, itron_success_without_format(job_id, sim.base_url))

        with pytest.raises(AssertionError):
            await same_with_view(sim, adapter, spec, lambda s: adapter.poll(s, job_id), view=broken)


# ---- Unicommerce ---------------------------------------------------------------------

DAY_MS = 86_400_000


def unicommerce_job() -> dict[str, Any]:
    """A UnicommerceExport as the runtime holds it; its facility is not the connection's
    (DEMO_WH), so its read shows in the Facility header."""
    now_ms = int(time.time() * 1000)
    return as_stored(
        {
            "type": "UnicommerceExport",
            "export_job_type_name": "Sale Orders",
            "export_columns": ["saleOrderCode", "displayOrderCode", "channel", "status", "created"],
            "export_filters": [
                {
                    "id": "addedOn",
                    "selected_values": [],
                    "text": None,
                    "date_range": {"start": now_ms - 30 * DAY_MS, "end": now_ms},
                },
                {"id": "channel", "selected_values": ["AMAZON_IN", "FLIPKART"], "text": None, "date_range": None},
                {"id": "saleOrderCode", "selected_values": [], "text": "SO-10", "date_range": None},
            ],
            "facility": "DEMO_STORE",
        }
    )


class TestUnicommerce:
    @pytest.fixture
    async def sim(self) -> AsyncIterator[UnicommerceSimulator]:
        async with running(UnicommerceSimulator(timing=FROZEN, seed=4)) as simulator:
            yield simulator

    @pytest.fixture
    def adapter(self, sim: UnicommerceSimulator, session: HttpClient) -> UnicommerceAdapter:
        built = build_adapter("uc", token_connection("unicommerce", sim.base_url), session)
        assert isinstance(built, UnicommerceAdapter)
        return built

    async def submitted(self, adapter: UnicommerceAdapter, request_id: str) -> tuple[JobSpec, str]:
        spec = JobSpec(request_id, "acme", "uc", unicommerce_job())
        return spec, (await adapter.submit(spec)).vendor_job_id

    def test_the_view_is_the_facility(self) -> None:
        assert UnicommerceAdapter.poll_view(unicommerce_job()) == {"facility": "DEMO_STORE"}

    async def test_polls_to_success_read_only_the_view(
        self, sim: UnicommerceSimulator, adapter: UnicommerceAdapter
    ) -> None:
        spec, job_code = await self.submitted(adapter, "req-uc-ok")

        answers = await poll_to_end(sim, adapter, spec, job_code)

        assert statuses(answers)[:3] == ["SCHEDULED", "RUNNING", "RUNNING"]
        assert answers[-1].status is Status.SUCCEEDED and answers[-1].file is not None
        polls = [r for r in sim.requests if r["path"].endswith("/export/job/status")]
        assert {r["headers"]["Facility"] for r in polls} == {"DEMO_STORE"}

    async def test_polls_to_failure_and_cancellation_read_only_the_view(
        self, sim: UnicommerceSimulator, adapter: UnicommerceAdapter
    ) -> None:
        """Uniware has no cancel call: a job cancelled in its UI is only seen by polling."""
        failing_spec, failing = await self.submitted(adapter, "req-uc-fails")
        sim.jobs[failing].fails = True
        cancelled_spec, cancelled = await self.submitted(adapter, "req-uc-cancelled")
        assert sim.cancel(cancelled)

        assert (await poll_to_end(sim, adapter, failing_spec, failing))[-1].status is Status.FAILED
        assert (await poll_to_end(sim, adapter, cancelled_spec, cancelled))[-1].status is Status.CANCELLED

    async def test_a_view_without_the_facility_sends_another_facility(
        self, sim: UnicommerceSimulator, adapter: UnicommerceAdapter
    ) -> None:
        spec, job_code = await self.submitted(adapter, "req-uc-broken")
        broken = without(adapter.poll_view(spec.job), "facility")

        with pytest.raises(AssertionError):
            await same_with_view(sim, adapter, spec, lambda s: adapter.poll(s, job_code), view=broken)


# ---- Elastic Path --------------------------------------------------------------------


class TestElasticPath:
    @pytest.fixture
    async def sim(self) -> AsyncIterator[ElasticPathSimulator]:
        async with running(ElasticPathSimulator(timing=Timing(stages=(HOUR, HOUR)), seed=5)) as simulator:
            yield simulator

    @pytest.fixture
    def adapter(self, sim: ElasticPathSimulator, session: HttpClient, store: FileResultStore) -> ElasticPathAdapter:
        built = build_adapter("ep", token_connection("elasticpath", sim.base_url), session, result_store=store)
        assert isinstance(built, ElasticPathAdapter)
        return built

    async def submitted(self, adapter: ElasticPathAdapter, request_id: str, job_type: str) -> tuple[JobSpec, str]:
        spec = JobSpec(request_id, "acme", "ep", as_stored({"type": "ElasticPathJob", "job_type": job_type}))
        return spec, (await adapter.submit(spec)).vendor_job_id

    def test_the_view_is_the_job_type(self) -> None:
        """Poll reads nothing of the body; the type tells which runs go one at a time."""
        view = ElasticPathAdapter.poll_view({"type": "ElasticPathJob", "job_type": "BILLING_RUN", "notes": "x"})
        assert view == {"job_type": "BILLING_RUN"}

    async def test_polls_to_success_and_the_stored_report_read_only_the_view(
        self, sim: ElasticPathSimulator, adapter: ElasticPathAdapter, store: FileResultStore
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-ep-ok", "BILLING_RUN")

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert statuses(answers) == ["pending", "started", "success"]
        file = answers[-1].file
        assert file is not None and file.format == "json" and file.sha256
        (artifact,) = (store.root / "elasticpath").iterdir()
        assert json.loads(artifact.read_text())["job_id"] == job_id

    async def test_polls_to_failure_read_only_the_view(
        self, sim: ElasticPathSimulator, adapter: ElasticPathAdapter
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-ep-fails", "TAX_RUN")
        sim.jobs[job_id].fails = True

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert answers[-1].status is Status.FAILED and answers[-1].error is not None


# ---- OpenGate ------------------------------------------------------------------------


def opengate_job(entities: list[str]) -> dict[str, Any]:
    """An OpenGateJob as the runtime holds it, with every optional field set."""
    return as_stored(
        {
            "type": "OpenGateJob",
            "operation": "REFRESH_INFO",
            "parameters_json": json.dumps({"variableList": "all", "timeout": 30}),
            "target": {"type": "OpenGateEntities", "entities": entities},
            "notify": True,
            "callback": "https://hooks.example.com/opengate/done",
            "schedule_stop_delayed_ms": 600_000,
            "operation_timeout_ms": 85_000,
            "operation_retries": 2,
            "operation_retries_delay_ms": 5_000,
        }
    )


def opengate_later(sim: OpenGateSimulator, job_id: str, seconds: float) -> None:
    """Move a simulated OpenGate job ``seconds`` on: its stages run from its activation,
    a cancellation from its DELETE."""
    job, og = sim.jobs[job_id], sim.og(job_id)
    job.created -= seconds
    if og.activated_at is not None:
        og.activated_at -= seconds
    if job.cancelled_at is not None:
        job.cancelled_at -= seconds


class TestOpenGate:
    @pytest.fixture
    async def sim(self) -> AsyncIterator[OpenGateSimulator]:
        async with running(OpenGateSimulator(timing=FROZEN, seed=11)) as simulator:
            yield simulator

    @pytest.fixture
    def adapter(self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore) -> OpenGateAdapter:
        # Small pages and chunks, so a job of a few hundred devices is submitted in chunks
        # and its operations are collected over several pages.
        conn = token_connection("opengate", sim.base_url, options={"max_entities": 100, "operations_page_size": 40})
        built = build_adapter("og", conn, session, result_store=store)
        assert isinstance(built, OpenGateAdapter)
        return built

    async def submitted(self, adapter: OpenGateAdapter, request_id: str, count: int) -> tuple[JobSpec, str]:
        spec = JobSpec(request_id, "acme", "og", opengate_job([f"meter-{i:04d}" for i in range(count)]))
        return spec, (await adapter.submit(spec)).vendor_job_id

    def test_the_view_is_empty(self) -> None:
        assert OpenGateAdapter.poll_view(opengate_job(["meter-0001"])) == {}

    async def test_polls_to_the_end_and_the_collected_operations_read_only_the_view(
        self, sim: OpenGateSimulator, adapter: OpenGateAdapter, store: FileResultStore
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-og-ok", 250)

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert statuses(answers) == ["SCHEDULED", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"]
        file = answers[-1].file
        assert answers[-1].status is Status.SUCCEEDED and file is not None and file.format == "jsonl"
        (artifact,) = (store.root / "opengate").iterdir()
        assert len(artifact.read_text().splitlines()) == 250
        listings = [r for r in sim.requests if r["path"].endswith("/operations")]
        assert len(listings) == 2 * 7  # 250 operations in pages of 40, for each call of the pair

    async def test_collecting_from_the_history_reads_only_the_view(
        self, sim: OpenGateSimulator, adapter: OpenGateAdapter
    ) -> None:
        """A finished job's listing can be empty: the operations come from the history search."""
        sim.listing_gone = True
        spec, job_id = await self.submitted(adapter, "req-og-history", 60)

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert answers[-1].status is Status.SUCCEEDED
        assert [r for r in sim.requests if r["path"].endswith("/operations/history")]

    async def test_a_failed_job_reads_only_the_view(self, sim: OpenGateSimulator, adapter: OpenGateAdapter) -> None:
        spec, job_id = await self.submitted(adapter, "req-og-fails", 3)
        sim.jobs[job_id].fails = True

        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert answers[-1].status is Status.FAILED

    async def test_cancel_and_the_polls_after_it_read_only_the_view(
        self, sim: OpenGateSimulator, adapter: OpenGateAdapter
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-og-cancel", 120)
        opengate_later(sim, job_id, HOUR)  # running when cancelled

        cancelled = await same_with_view(sim, adapter, spec, lambda s: adapter.cancel(s, job_id))
        answers = await poll_to_end(sim, adapter, spec, job_id)

        assert cancelled == CancelAnswered(vendor_status="CANCELLING", status=Status.RUNNING)
        assert statuses(answers) == ["CANCELLING", "CANCELLED"]
        assert [r for r in sim.requests if r["method"] == "DELETE"]

    async def test_cancelling_a_finished_job_is_refused_alike(
        self, sim: OpenGateSimulator, adapter: OpenGateAdapter
    ) -> None:
        spec, job_id = await self.submitted(adapter, "req-og-late-cancel", 3)
        opengate_later(sim, job_id, 3 * HOUR)

        refused = await same_with_view(sim, adapter, spec, lambda s: adapter.cancel(s, job_id))

        assert isinstance(refused, tuple) and "cannot be cancelled" in refused[1]
