"""The Unicommerce adapter against its simulator (real HTTP), and one request through the
worker and a real broker."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.conftest import FAST_POLICY, running
from worker.config import ConnectionConfig, SecretRef, Settings
from worker.engine.model import PollAnswered, Status
from worker.errors import (
    AuthFailed,
    InvalidRequest,
    MalformedAnswer,
    RateLimited,
    VendorBusy,
    VendorRejected,
    VendorUnavailable,
)
from worker.ingest import jsonable
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.unicommerce import UnicommerceSimulator, sample_job
from worker.testing import OutputReader, Publisher, eventually, terminal
from worker.vendors import HttpClient, build_adapter, validator
from worker.vendors.base import JobSpec
from worker.vendors.unicommerce import UnicommerceAdapter

CREATE = "/services/rest/v1/export/job/create"
STATUS = "/services/rest/v1/export/job/status"
COLUMNS = ["saleOrderCode", "channel", "status"]
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 10, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC)


def uc_connection(base_url: str, **overrides: Any) -> ConnectionConfig:
    values: dict[str, Any] = {
        "vendor": "unicommerce",
        "base_url": base_url,
        "username": "demo@example.com",
        "password": SecretRef(value="demo-password"),
        "facility": "DEMO_WH",
        "policy": FAST_POLICY,
        "rate_per_s": 200,
    }
    values.update(overrides)
    return ConnectionConfig(**values)


def uc_job(**overrides: Any) -> dict[str, Any]:
    """A UnicommerceExport as fastavro decodes it (timestamps as datetimes)."""
    job: dict[str, Any] = {
        "export_job_type_name": "Sale Orders",
        "export_columns": list(COLUMNS),
        "export_filters": [
            {"id": "addedOn", "selected_values": [], "text": None, "date_range": {"start": START, "end": END}},
            {"id": "channel", "selected_values": ["AMAZON_IN", "FLIPKART"], "text": None, "date_range": None},
            {"id": "saleOrderCode", "selected_values": [], "text": "SO-10", "date_range": None},
        ],
        "facility": None,
    }
    job.update(overrides)
    return job


def uc_request(request_id: str, *, connection: str = "uc") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "tenant": "acme",
        "connection": connection,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {},
        "job": ("export.v1.UnicommerceExport", uc_job()),
        "replay_of": None,
    }


def job_spec(request_id: str, **overrides: Any) -> JobSpec:
    """What the runtime hands the adapter: the job as ingest's ``jsonable`` renders it."""
    return JobSpec(request_id, "acme", "uc", jsonable(("export.v1.UnicommerceExport", uc_job(**overrides))))


@pytest.fixture
async def uc_sim() -> AsyncIterator[UnicommerceSimulator]:
    sim = UnicommerceSimulator(timing=Timing(stages=(0.1, 0.1)), seed=11)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def adapter(uc_sim: UnicommerceSimulator, session: HttpClient) -> UnicommerceAdapter:
    built = build_adapter("uc", uc_connection(uc_sim.base_url), session)
    assert isinstance(built, UnicommerceAdapter)
    return built


async def poll_to_end(adapter: UnicommerceAdapter, spec: JobSpec, job_code: str) -> PollAnswered:
    async def finished() -> PollAnswered | None:
        answer = await adapter.poll(spec, job_code)
        return answer if answer.status.terminal else None

    return await eventually(finished, timeout=10, what="a terminal export status")


def token_calls(sim: UnicommerceSimulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["path"] == "/oauth/token"]


class TestValidate:
    @pytest.mark.parametrize("facility", ["F1\r\nX-Injected: 1", "F1\x00", "F" * 257])
    def test_a_facility_that_cannot_be_a_header_value_is_refused(self, facility: str) -> None:
        """The facility is sent as the Facility header: no line breaks, no control characters."""
        with pytest.raises(InvalidRequest, match="facility must be at most 256 printable characters"):
            validator("unicommerce")(jsonable(uc_job(facility=facility)), 0, uc_connection("http://x"))

    def test_a_full_export_is_valid(self) -> None:
        """Columns, all three filter kinds and the connection's facility pass validation."""
        validator("unicommerce")(jsonable(uc_job()), 0, uc_connection("http://x"))

    def test_the_simulators_sample_job_is_valid(self) -> None:
        """The demo's sample job passes validation against the demo connection."""
        _, job = sample_job()
        validator("unicommerce")(jsonable(job), 0, uc_connection("http://x"))

    @pytest.mark.parametrize(
        ("overrides", "words"),
        [
            ({"export_job_type_name": " "}, "export_job_type_name"),
            ({"export_columns": []}, "export_columns"),
            ({"export_filters": [{"id": "", "selected_values": ["A"], "text": None, "date_range": None}]}, "id"),
            ({"export_filters": [{"id": "status", "selected_values": [], "text": None, "date_range": None}]}, "value"),
            (
                {
                    "export_filters": [
                        {
                            "id": "addedOn",
                            "selected_values": [],
                            "text": None,
                            "date_range": {"start": END, "end": START},
                        }
                    ]
                },
                "ends before",
            ),
        ],
    )
    def test_what_uniware_would_refuse_is_invalid(self, overrides: dict[str, Any], words: str) -> None:
        """No type, no columns, a filter without id or value, a reversed range: InvalidRequest."""
        with pytest.raises(InvalidRequest, match=words):
            validator("unicommerce")(jsonable(uc_job(**overrides)), 0, uc_connection("http://x"))

    def test_a_facility_is_required_somewhere(self) -> None:
        """Without a facility on the request or the connection the request is invalid; either one will do."""
        conn = uc_connection("http://x", facility=None)
        with pytest.raises(InvalidRequest, match="facility"):
            validator("unicommerce")(jsonable(uc_job()), 0, conn)
        validator("unicommerce")(jsonable(uc_job(facility="DEMO_STORE")), 0, conn)


class TestHappyPath:
    async def test_an_export_ends_with_its_csv_link(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator, probe: aiohttp.ClientSession
    ) -> None:
        """Create gives a job code; the job ends SUCCEEDED with the filePath as a CSV link."""
        spec = job_spec("req-happy")
        submitted = await adapter.submit(spec)
        assert submitted.status is Status.QUEUED and submitted.vendor_job_id in uc_sim.jobs

        done = await poll_to_end(adapter, spec, submitted.vendor_job_id)

        assert done.status is Status.SUCCEEDED
        assert done.file is not None
        assert done.file.url == f"{uc_sim.base_url}/files/{submitted.vendor_job_id}.csv"
        assert (done.file.format, done.file.expires_at_ms) == ("csv", None)
        async with probe.get(done.file.url) as response:
            assert response.status == 200
            rows = list(csv.reader(io.StringIO(await response.text())))
        assert rows[0] == COLUMNS and len(rows) == 3

    async def test_complete_and_successful_both_succeed(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """The documented SUCCESSFUL and the observed COMPLETE both end a job SUCCEEDED with its link."""
        answers = []
        for rid in ("req-odd", "req-even"):
            spec = job_spec(rid)
            submitted = await adapter.submit(spec)
            answers.append(await poll_to_end(adapter, spec, submitted.vendor_job_id))
        assert {a.vendor_status for a in answers} == {"COMPLETE", "SUCCESSFUL"}
        assert all(a.status is Status.SUCCEEDED and a.file is not None for a in answers)

    async def test_a_relative_file_path_is_resolved_against_the_base_url(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """A filePath without scheme and host becomes a link on the tenant's host."""
        uc_sim.answer_next(200, '{"successful": true, "status": "COMPLETE", "filePath": "/files/EXP9.csv"}')
        done = await adapter.poll(job_spec("req-rel"), "EXP9")
        assert done.file is not None and done.file.url == f"{uc_sim.base_url}/files/EXP9.csv"

    async def test_success_without_a_link_carries_no_file(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """COMPLETE with an empty filePath is success without a file (the engine keeps asking)."""
        uc_sim.answer_next(200, '{"successful": true, "status": "COMPLETE", "filePath": ""}')
        done = await adapter.poll(job_spec("req-nolink"), "EXP9")
        assert done.status is Status.SUCCEEDED and done.file is None


class TestStatuses:
    async def test_an_undocumented_status_keeps_running_and_is_logged_once(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """SCHEDULED and RUNNING are not documented: the job stays RUNNING and one warning names it."""
        uc_sim.timing.stages = (0.3, 30.0)
        spec = job_spec("req-unknown")
        submitted = await adapter.submit(spec)
        with capture_logs() as logs:
            first = await adapter.poll(spec, submitted.vendor_job_id)
            again = await adapter.poll(spec, submitted.vendor_job_id)

            async def running_now() -> PollAnswered | None:
                answer = await adapter.poll(spec, submitted.vendor_job_id)
                return answer if answer.vendor_status == "RUNNING" else None

            later = await eventually(running_now, timeout=5, what="RUNNING")
        assert [a.status for a in (first, again, later)] == [Status.RUNNING] * 3
        assert first.vendor_status == "SCHEDULED"
        notes = [e for e in logs if "not documented" in e["event"]]
        assert len(notes) == 1
        assert notes[0]["log_level"] == "warning"
        assert (notes[0]["vendor_status"], notes[0]["vendor_job_id"]) == ("SCHEDULED", submitted.vendor_job_id)

    async def test_failed_ends_failed_with_the_vendors_message(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """FAILED ends the job FAILED, not retryable, with Uniware's message."""
        uc_sim.faults.plan.next_fail = 1
        spec = job_spec("req-fail")
        submitted = await adapter.submit(spec)
        done = await poll_to_end(adapter, spec, submitted.vendor_job_id)
        assert done.status is Status.FAILED and done.file is None
        assert done.error is not None and not done.error.retryable
        assert "query timed out" in done.error.message

    async def test_cancelled_ends_cancelled(self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator) -> None:
        """A job cancelled at Uniware ends CANCELLED."""
        uc_sim.timing.stages = (30.0, 30.0)
        spec = job_spec("req-cancel")
        submitted = await adapter.submit(spec)
        assert uc_sim.cancel(submitted.vendor_job_id)
        done = await adapter.poll(spec, submitted.vendor_job_id)
        assert (done.status, done.vendor_status) == (Status.CANCELLED, "CANCELLED")


class TestVendorErrors:
    async def test_an_unknown_export_type_is_rejected_with_uniwares_words(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """HTTP 200 with successful=false on create is VendorRejected carrying the vendor's description."""
        with pytest.raises(VendorRejected) as caught:
            await adapter.submit(job_spec("req-bad-type", export_job_type_name="Sale Orderz"))
        assert "Invalid export job type: Sale Orderz" in caught.value.message
        assert "INVALID_EXPORT_JOB_TYPE" in caught.value.message
        assert not caught.value.retriable
        assert uc_sim.jobs == {}

    async def test_an_unknown_job_code_is_rejected(self, adapter: UnicommerceAdapter) -> None:
        """HTTP 200 with successful=false on status (unknown job code) is VendorRejected, never success."""
        with pytest.raises(VendorRejected, match="Invalid job code: EXP404"):
            await adapter.poll(job_spec("req-x"), "EXP404")

    async def test_try_again_later_is_retriable(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """successful=false saying 'try again' is VendorUnavailable, and the vendor created nothing."""
        uc_sim.answer_next(
            200,
            '{"successful": false, "errors": [{"description": "Please try again after some time", "message": "X"}]}',
        )
        with pytest.raises(VendorUnavailable) as caught:
            await adapter.submit(job_spec("req-later"))
        assert "try again" in caught.value.message and caught.value.outcome_unknown is False

    async def test_another_export_running_is_busy(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """successful=false on create saying an export is already in progress is VendorBusy (queued)."""
        uc_sim.answer_next(
            200, '{"successful": false, "errors": [{"description": "An export of this type is already in progress"}]}'
        )
        with pytest.raises(VendorBusy):
            await adapter.submit(job_spec("req-busy"))

    async def test_an_unknown_facility_is_rejected_with_the_status(self, adapter: UnicommerceAdapter) -> None:
        """A facility display name instead of its code answers 403: VendorRejected with Uniware's message."""
        with pytest.raises(VendorRejected) as caught:
            await adapter.submit(job_spec("req-facility", facility="Demo Warehouse"))
        assert caught.value.status == 403
        assert "Access denied for facility Demo Warehouse" in caught.value.message


class TestAuth:
    async def test_an_expired_token_is_renewed_with_the_refresh_token(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """A 401 renews the token once with the refresh-token grant and the call succeeds."""
        spec = job_spec("req-refresh")
        submitted = await adapter.submit(spec)
        uc_sim.tokens.clear()

        answer = await adapter.poll(spec, submitted.vendor_job_id)

        assert answer.status in (Status.RUNNING, Status.SUCCEEDED)
        assert adapter.token.fetches == 2
        grants = [r["query"]["grant_type"] for r in token_calls(uc_sim)]
        assert grants == ["password", "refresh_token"]
        refresh = token_calls(uc_sim)[1]["query"]
        assert refresh["client_id"] == "my-trusted-client" and refresh["refresh_token"] in uc_sim.refresh_tokens
        assert "password" not in refresh

    async def test_a_refused_refresh_falls_back_to_the_password_grant_without_leaking_it(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """When the refresh token is refused the adapter logs in again; the refused token is not logged."""
        spec = job_spec("req-relogin")
        submitted = await adapter.submit(spec)
        old_refresh = next(iter(uc_sim.refresh_tokens))
        uc_sim.tokens.clear()
        uc_sim.revoke_refresh_tokens()

        with capture_logs() as logs:
            answer = await adapter.poll(spec, submitted.vendor_job_id)

        assert answer.status in (Status.RUNNING, Status.SUCCEEDED)
        assert [r["query"]["grant_type"] for r in token_calls(uc_sim)] == ["password", "refresh_token", "password"]
        (note,) = [e for e in logs if "refresh token refused" in e["event"]]
        assert note["status"] == 400
        assert old_refresh not in repr(logs)

    async def test_a_second_401_after_the_refresh_is_auth_failed(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """Refused again after one renewal: AuthFailed."""
        spec = job_spec("req-401")
        submitted = await adapter.submit(spec)
        uc_sim.faults.plan.next_401 = 2
        with pytest.raises(AuthFailed):
            await adapter.poll(spec, submitted.vendor_job_id)

    async def test_a_wrong_password_is_auth_failed_without_the_password(
        self, uc_sim: UnicommerceSimulator, session: HttpClient
    ) -> None:
        """A refused login is AuthFailed; the password appears nowhere in the error."""
        bad = build_adapter("uc", uc_connection(uc_sim.base_url, password=SecretRef(value="hunter2-xyz")), session)
        with pytest.raises(AuthFailed) as caught:
            await bad.submit(job_spec("req-badpw"))
        assert "hunter2-xyz" not in str(caught.value)
        assert uc_sim.jobs == {}


class TestRateLimit:
    async def test_429_is_rate_limited_with_retry_after(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """A 429 on poll is RateLimited with the vendor's Retry-After."""
        spec = job_spec("req-429")
        submitted = await adapter.submit(spec)
        uc_sim.faults.plan.retry_after_s = 4
        uc_sim.faults.plan.next_429 = 1
        with pytest.raises(RateLimited) as caught:
            await adapter.poll(spec, submitted.vendor_job_id)
        assert caught.value.retry_after == 4.0


class TestMalformed:
    async def test_an_html_page_is_malformed(self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator) -> None:
        """An HTML page with status 200 is MalformedAnswer; on create the outcome is unknown."""
        uc_sim.faults.plan.next_malformed = 1
        with pytest.raises(MalformedAnswer, match="not JSON") as caught:
            await adapter.submit(job_spec("req-html"))
        assert caught.value.outcome_unknown is True

    async def test_an_empty_body_is_malformed(self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator) -> None:
        """An empty 200 is MalformedAnswer."""
        uc_sim.answer_next(200, b"")
        with pytest.raises(MalformedAnswer, match="empty body"):
            await adapter.poll(job_spec("req-empty"), "EXP1")

    async def test_json_without_the_successful_flag_is_never_success(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """A 200 whose JSON lacks a boolean 'successful' is MalformedAnswer, even if it says COMPLETE."""
        uc_sim.answer_next(200, '{"status": "COMPLETE", "filePath": "https://example.com/x.csv"}')
        with pytest.raises(MalformedAnswer, match="successful"):
            await adapter.poll(job_spec("req-noflag"), "EXP1")

    async def test_a_create_answer_without_job_code_is_malformed(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """successful=true without jobCode on create is MalformedAnswer with an unknown outcome."""
        uc_sim.answer_next(200, '{"successful": true, "errors": []}')
        with pytest.raises(MalformedAnswer, match="jobCode") as caught:
            await adapter.submit(job_spec("req-nocode"))
        assert caught.value.outcome_unknown is True


class TestReconcile:
    async def test_reconcile_cannot_tell(self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator) -> None:
        """Uniware has no job lookup: reconcile answers known=False and calls nothing."""
        found = await adapter.reconcile(job_spec("req-lost"))
        assert found.known is False
        assert uc_sim.requests == []
        assert UnicommerceAdapter.can_reconcile is False


class TestContract:
    async def test_requests_match_the_documented_protocol(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """Token, create and status requests carry exactly the documented method, path, headers and body."""
        spec = job_spec("req-contract")
        submitted = await adapter.submit(spec)
        await adapter.poll(spec, submitted.vendor_job_id)
        (token,) = list(uc_sim.tokens)

        token_call, create, status = uc_sim.requests
        assert (token_call["method"], token_call["path"], token_call["body"]) == ("GET", "/oauth/token", "")
        assert token_call["query"] == {
            "grant_type": "password",
            "client_id": "my-trusted-client",
            "username": "demo@example.com",
            "password": "demo-password",
        }
        assert "Authorization" not in token_call["headers"]

        assert (create["method"], create["path"]) == ("POST", CREATE)
        assert create["headers"]["Authorization"] == f"bearer {token}"
        assert create["headers"]["Facility"] == "DEMO_WH"
        assert create["headers"]["Content-Type"] == "application/json"
        assert json.loads(create["body"]) == {
            "exportJobTypeName": "Sale Orders",
            "exportColums": COLUMNS,
            "exportFilters": [
                {
                    "id": "addedOn",
                    "dateRange": {"start": "2026-10-01T00:00:00.000Z", "end": "2026-10-31T23:59:59.500Z"},
                },
                {"id": "channel", "selectedValues": ["AMAZON_IN", "FLIPKART"]},
                {"id": "saleOrderCode", "text": "SO-10"},
            ],
            "frequency": "ONETIME",
        }

        assert (status["method"], status["path"]) == ("POST", STATUS)
        assert status["headers"]["Authorization"] == f"bearer {token}"
        assert status["headers"]["Facility"] == "DEMO_WH"
        assert status["headers"]["Content-Type"] == "application/json"
        assert json.loads(status["body"]) == {"jobCode": submitted.vendor_job_id}

    async def test_the_requests_facility_overrides_the_connections(
        self, adapter: UnicommerceAdapter, uc_sim: UnicommerceSimulator
    ) -> None:
        """A facility on the request is the Facility header of its calls."""
        spec = job_spec("req-store", facility="DEMO_STORE")
        submitted = await adapter.submit(spec)
        await adapter.poll(spec, submitted.vendor_job_id)
        assert [r["headers"]["Facility"] for r in uc_sim.requests if r["path"] in (CREATE, STATUS)] == [
            "DEMO_STORE",
            "DEMO_STORE",
        ]


class TestEndToEnd:
    async def test_an_export_reaches_succeeded_with_its_csv_announced(
        self, settings: Settings, uc_sim: UnicommerceSimulator
    ) -> None:
        """export.requests -> Unicommerce (simulated) -> SUCCEEDED and one FileReady with the CSV link."""
        worker = Worker(settings, connections={"uc": uc_connection(uc_sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(uc_request("uc-e2e-1"))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ["uc-e2e-1"]), timeout=30)
        events = out.events("uc-e2e-1")
        assert [e["status"] for e in events][:2] == ["ACCEPTED", "SUBMITTED"]
        assert events[-1]["status"] == "SUCCEEDED"
        assert events[-1]["vendor_status"] in ("COMPLETE", "SUCCESSFUL")
        (announced,) = out.files_for("uc-e2e-1")
        code = announced["vendor_job_id"]
        assert announced["url"] == f"{uc_sim.base_url}/files/{code}.csv"
        assert announced["format"] == "csv"
        assert announced["expires_at"] is not None  # the configured default, as Uniware says none
