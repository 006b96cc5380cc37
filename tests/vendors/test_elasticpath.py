"""The Elastic Path adapter against its simulator (real HTTP), and requests through the
worker and a real broker."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
import yarl

from tests.conftest import FAST_POLICY, running
from worker.config import ConnectionConfig, SecretRef, Settings
from worker.engine.model import PollAnswered, Status
from worker.errors import (
    AuthFailed,
    MalformedAnswer,
    RateLimited,
    VendorBusy,
    VendorRejected,
    VendorUnavailable,
)
from worker.ingest import jsonable
from worker.ops.replay import derive_id
from worker.result_store import FileResultStore
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.elasticpath import ElasticPathSimulator, sample_job
from worker.testing import OutputReader, Publisher, eventually, terminal
from worker.vendors import HttpClient, build_adapter, validator
from worker.vendors.base import JobSpec
from worker.vendors.elasticpath import ElasticPathAdapter, error_words

JOBS = "/v2/subscriptions/jobs"


def ep_connection(base_url: str, **overrides: Any) -> ConnectionConfig:
    values: dict[str, Any] = {
        "vendor": "elasticpath",
        "base_url": base_url,
        "client_id": "demo-client",
        "client_secret": SecretRef(value="demo-secret"),
        "policy": FAST_POLICY,
        "rate_per_s": 200,
    }
    values.update(overrides)
    return ConnectionConfig(**values)


def ep_request(request_id: str, *, job_type: str = "BILLING_RUN", connection: str = "ep") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "tenant": "acme",
        "connection": connection,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {},
        "job": ("export.v1.ElasticPathJob", {"job_type": job_type}),
        "replay_of": None,
    }


def job_spec(request_id: str, job_type: str = "BILLING_RUN") -> JobSpec:
    """What the runtime hands the adapter: the job as ingest's ``jsonable`` renders it."""
    return JobSpec(request_id, "acme", "ep", jsonable(("export.v1.ElasticPathJob", {"job_type": job_type})))


def file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


@pytest.fixture
async def ep_sim() -> AsyncIterator[ElasticPathSimulator]:
    sim = ElasticPathSimulator(timing=Timing(stages=(0.1, 0.1)), seed=5)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def adapter(ep_sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path) -> ElasticPathAdapter:
    built = build_adapter(
        "ep", ep_connection(ep_sim.base_url), session, result_store=FileResultStore(tmp_path / "results")
    )
    assert isinstance(built, ElasticPathAdapter)
    return built


async def poll_to_end(adapter: ElasticPathAdapter, spec: JobSpec, job_id: str) -> PollAnswered:
    async def finished() -> PollAnswered | None:
        answer = await adapter.poll(spec, job_id)
        return answer if answer.status.terminal else None

    return await eventually(finished, timeout=10, what="a terminal job status")


def api_requests(sim: ElasticPathSimulator, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
    return [
        r for r in sim.requests if (method is None or r["method"] == method) and (path is None or r["path"] == path)
    ]


async def list_with_filter(
    sim: ElasticPathSimulator, probe: aiohttp.ClientSession, raw_filter: str
) -> aiohttp.ClientResponse:
    """List jobs with ``raw_filter`` sent exactly as given (already URL encoded)."""
    async with probe.post(
        f"{sim.base_url}/oauth/access_token",
        data={"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret"},
    ) as answer:
        token = (await answer.json())["access_token"]
    url = yarl.URL(f"{sim.base_url}{JOBS}?filter={raw_filter}", encoded=True)
    async with probe.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
        await answer.read()
        return answer


class TestValidate:
    def test_our_job_types_are_accepted(self) -> None:
        """Every ElasticPathJobType of the schema passes validation."""
        check = validator("elasticpath")
        for job_type in ("BILLING_RUN", "TAX_RUN", "PAYMENT_RUN"):
            check({"type": "ElasticPathJob", "job_type": job_type}, 0, ep_connection("http://x"))

    def test_an_unknown_job_type_is_refused(self) -> None:
        """A job type Elastic Path does not run is an invalid request, before any call."""
        from worker.errors import InvalidRequest

        with pytest.raises(InvalidRequest, match="job_type"):
            validator("elasticpath")({"type": "ElasticPathJob", "job_type": "IMPORT"}, 0, ep_connection("http://x"))

    def test_the_simulators_sample_job_is_valid(self) -> None:
        """The demo's sample job passes validation."""
        _, job = sample_job()
        validator("elasticpath")(jsonable(job), 0, ep_connection("http://x"))


class TestHappyPath:
    async def test_report_is_written_as_one_json_artifact(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A billing run is submitted pending, ends in success, and its report becomes one JSON artifact."""
        spec = job_spec("req-happy")
        submitted = await adapter.submit(spec)
        assert (submitted.status, submitted.vendor_status) == (Status.QUEUED, "pending")

        done = await poll_to_end(adapter, spec, submitted.vendor_job_id)

        assert done.status is Status.SUCCEEDED and done.vendor_status == "success"
        assert done.file is not None and done.file.format == "json"
        data = file_path(done.file.url).read_bytes()
        assert done.file.size_bytes == len(data)
        assert done.file.sha256 == hashlib.sha256(data).hexdigest()
        artifact = json.loads(data)
        sim_job = ep_sim.jobs[submitted.vendor_job_id]
        assert artifact["report"] == ep_sim.report(sim_job)
        assert artifact["job_id"] == submitted.vendor_job_id
        assert artifact["external_ref"] == "req-happy"
        assert artifact["job_type"] == "billing-run"
        assert set(artifact["timestamps"]) >= {"created_at", "started_at", "finished_at"}

    async def test_the_longest_request_id_of_any_characters_gets_its_artifact(
        self, adapter: ElasticPathAdapter
    ) -> None:
        """Request ids are up to 256 characters of anything: escaped, that is no file
        name a file system accepts, and writing it failed until the failure budget ran out."""
        long_id = "é/%~" * 64
        spec = job_spec(long_id)
        submitted = await adapter.submit(spec)
        done = await poll_to_end(adapter, spec, submitted.vendor_job_id)
        assert done.status is Status.SUCCEEDED and done.file is not None
        assert json.loads(file_path(done.file.url).read_bytes())["external_ref"] == long_id

    async def test_polling_again_rewrites_the_same_bytes(self, adapter: ElasticPathAdapter) -> None:
        """A repeated poll of a finished job stores an identical artifact (same digest)."""
        spec = job_spec("req-twice", "TAX_RUN")
        submitted = await adapter.submit(spec)
        first = await poll_to_end(adapter, spec, submitted.vendor_job_id)
        second = await adapter.poll(spec, submitted.vendor_job_id)
        assert first.file is not None and second.file is not None
        assert (second.file.url, second.file.sha256) == (first.file.url, first.file.sha256)

    async def test_pending_then_started_read_as_queued_then_running(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """pending is QUEUED and started is RUNNING."""
        ep_sim.timing.stages = (0.3, 30.0)
        spec = job_spec("req-stages", "PAYMENT_RUN")
        submitted = await adapter.submit(spec)
        first = await adapter.poll(spec, submitted.vendor_job_id)
        assert (first.status, first.vendor_status) == (Status.QUEUED, "pending")

        async def started() -> PollAnswered | None:
            answer = await adapter.poll(spec, submitted.vendor_job_id)
            return answer if answer.status is Status.RUNNING else None

        running_answer = await eventually(started, timeout=5, what="started")
        assert running_answer.vendor_status == "started"


class TestFailure:
    async def test_a_failed_job_ends_failed_with_the_vendor_reason(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A job Elastic Path reports failed ends FAILED, not retryable, with its reason."""
        ep_sim.faults.plan.next_fail = 1
        spec = job_spec("req-fails")
        submitted = await adapter.submit(spec)
        done = await poll_to_end(adapter, spec, submitted.vendor_job_id)
        assert done.status is Status.FAILED and done.file is None
        assert done.error is not None and not done.error.retryable
        assert "billing-run failed" in done.error.message
        assert "payment gateway unavailable" in done.error.message

    async def test_polling_an_unknown_job_is_refused_with_the_vendors_words(self, adapter: ElasticPathAdapter) -> None:
        """A 404 is refused for good in every error shape of the seed, with title and detail in the message."""
        messages = []
        for _ in range(3):  # the simulator cycles through the seed's three error shapes
            with pytest.raises(VendorRejected) as caught:
                await adapter.poll(job_spec("req-x"), "6b0f2a77-8b2c-4c56-9b0b-6a4d7f8a1e21")
            assert caught.value.status == 404
            messages.append(caught.value.message)
        assert any("Not Found: No job found" in m for m in messages)
        assert any("Internal server error: An internal error has occurred." in m for m in messages)


class TestErrorWords:
    def test_the_seeds_mixed_shapes_all_yield_words(self) -> None:
        """title and detail are read from every error shape the seed shows."""
        assert error_words(b'{"errors": [{"title": "Not Found", "status": "404", "detail": "No plan found"}]}') == [
            "Not Found: No plan found"
        ]
        assert error_words(b'{"errors": [{"title": "Internal Server Error", "status": "500"}]}') == [
            "Internal Server Error"
        ]
        assert error_words(b'{"errors": [{"status": 500, "title": "Internal server error", "meta": {}}]}') == [
            "Internal server error"
        ]
        assert error_words(b'{"errors": {"title": "Write Conflict", "status": "409"}}') == ["Write Conflict"]
        assert error_words(b'{"error": "invalid_token"}') == ["invalid_token"]

    def test_bodies_without_words_yield_none(self) -> None:
        """HTML, empty bodies and foreign JSON give no words (the raw excerpt is used instead)."""
        assert error_words(b"<html>502</html>") == []
        assert error_words(b"") == []
        assert error_words(b'{"errors": [{"status": "500"}]}') == []
        assert error_words(b"[1, 2]") == []


class TestAuth:
    async def test_an_expired_token_is_refreshed_once_and_the_call_retried(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A 401 fetches a new token once and the same call then succeeds."""
        spec = job_spec("req-auth", "TAX_RUN")
        submitted = await adapter.submit(spec)
        assert adapter.token.fetches == 1
        ep_sim.tokens.clear()  # every token issued so far is now unknown: the next call gets 401

        answer = await adapter.poll(spec, submitted.vendor_job_id)

        assert answer.status in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        assert adapter.token.fetches == 2
        paths = [(r["method"], r["path"]) for r in ep_sim.requests]
        poll_path = f"{JOBS}/{submitted.vendor_job_id}"
        assert paths[-3:] == [("GET", poll_path), ("POST", "/oauth/access_token"), ("GET", poll_path)]

    async def test_a_second_401_after_the_refresh_is_auth_failed(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """Credentials refused again after one refresh end in AuthFailed, without a third try."""
        await adapter.submit(job_spec("req-auth2", "TAX_RUN"))
        ep_sim.faults.plan.next_401 = 2
        with pytest.raises(AuthFailed):
            await adapter.reconcile(job_spec("req-auth2", "TAX_RUN"))
        assert adapter.token.fetches == 2

    async def test_wrong_client_credentials_are_auth_failed_without_the_secret(
        self, ep_sim: ElasticPathSimulator, session: HttpClient, tmp_path: Path
    ) -> None:
        """A refused client secret is AuthFailed, and the secret appears nowhere in the message."""
        conn = ep_connection(ep_sim.base_url, client_secret=SecretRef(value="wrong-secret-123"))
        bad = build_adapter("ep", conn, session, result_store=FileResultStore(tmp_path))
        with pytest.raises(AuthFailed) as caught:
            await bad.submit(job_spec("req-bad-creds"))
        assert "wrong-secret-123" not in str(caught.value)
        assert "Invalid client credentials" in caught.value.message
        assert ep_sim.jobs == {}


class TestRateLimit:
    async def test_429_is_rate_limited_with_the_vendors_retry_after(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A 429 on submit is RateLimited with Retry-After, and the vendor acted on nothing."""
        ep_sim.faults.plan.retry_after_s = 7
        ep_sim.faults.plan.next_429 = 1
        with pytest.raises(RateLimited) as caught:
            await adapter.submit(job_spec("req-429"))
        assert caught.value.retry_after == 7.0
        assert caught.value.outcome_unknown is False
        assert ep_sim.jobs == {}


class TestMalformed:
    async def test_an_html_error_page_is_malformed(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """An HTML page with status 200 on a poll is MalformedAnswer."""
        spec = job_spec("req-html")
        submitted = await adapter.submit(spec)
        ep_sim.faults.plan.next_malformed = 1
        with pytest.raises(MalformedAnswer, match="not JSON"):
            await adapter.poll(spec, submitted.vendor_job_id)

    async def test_an_empty_body_is_malformed(self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator) -> None:
        """An empty 200 on a poll is MalformedAnswer."""
        spec = job_spec("req-empty")
        submitted = await adapter.submit(spec)
        ep_sim.answer_next(200, b"")
        with pytest.raises(MalformedAnswer, match="empty body"):
            await adapter.poll(spec, submitted.vendor_job_id)

    async def test_unexpected_json_is_malformed(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """JSON without data.id and data.attributes.status is MalformedAnswer."""
        spec = job_spec("req-odd")
        submitted = await adapter.submit(spec)
        ep_sim.answer_next(200, '{"data": {"type": "subscription_job", "unexpected": true}}')
        with pytest.raises(MalformedAnswer, match=r"data\.id"):
            await adapter.poll(spec, submitted.vendor_job_id)

    async def test_a_malformed_submit_answer_leaves_the_outcome_unknown(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """An unreadable answer to a create may hide a created job: the engine must reconcile."""
        ep_sim.answer_next(201, '{"data": null}')
        with pytest.raises(MalformedAnswer) as caught:
            await adapter.submit(job_spec("req-odd-submit"))
        assert caught.value.outcome_unknown is True

    async def test_success_without_a_report_is_malformed(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """success without meta.report is not a result yet: MalformedAnswer (retried)."""
        body = {"data": {"id": "x", "type": "subscription_job", "attributes": {"status": "success"}, "meta": {}}}
        ep_sim.answer_next(200, json.dumps(body))
        with pytest.raises(MalformedAnswer, match=r"meta\.report"):
            await adapter.poll(job_spec("req-no-report"), "x")


class TestBusyStore:
    async def test_a_second_billing_run_is_busy_until_the_first_ends(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """While a billing run is pending or started, another is VendorBusy (retriable, no job created);
        a tax run is not limited; once the first has ended the second is accepted."""
        ep_sim.timing.stages = (30.0, 30.0)
        first = await adapter.submit(job_spec("req-first"))

        with pytest.raises(VendorBusy) as caught:
            await adapter.submit(job_spec("req-second"))
        assert caught.value.retriable and not caught.value.outcome_unknown
        assert caught.value.status == 409
        assert [j.match_key for j in ep_sim.jobs.values()] == ["req-first"]

        tax = await adapter.submit(job_spec("req-tax", "TAX_RUN"))
        assert tax.status is Status.QUEUED

        ep_sim.jobs[first.vendor_job_id].created -= 100  # the first run has finished meanwhile
        second = await adapter.submit(job_spec("req-second"))
        assert ep_sim.jobs[second.vendor_job_id].match_key == "req-second"

    async def test_a_422_saying_a_run_is_in_progress_is_busy(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A 422 whose words say a run is already in progress is read as busy too."""
        body = {
            "errors": [{"status": "422", "title": "Unprocessable Content", "detail": "a billing run is in progress"}]
        }
        ep_sim.answer_next(422, json.dumps(body))
        with pytest.raises(VendorBusy, match="a billing run is in progress"):
            await adapter.submit(job_spec("req-422"))

    async def test_other_4xx_on_submit_are_rejected_with_the_vendors_words(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A 422 about something else, or a 400, is VendorRejected carrying title and detail."""
        body = {"errors": [{"status": "422", "title": "Unprocessable Content", "detail": "no plans to bill"}]}
        ep_sim.answer_next(422, json.dumps(body))
        with pytest.raises(VendorRejected, match="Unprocessable Content: no plans to bill"):
            await adapter.submit(job_spec("req-422b"))
        ep_sim.answer_next(400, '{"errors": [{"title": "Validation Error", "status": "400", "detail": "bad ref"}]}')
        with pytest.raises(VendorRejected, match="Validation Error: bad ref") as caught:
            await adapter.submit(job_spec("req-400"))
        assert caught.value.status == 400 and not caught.value.retriable


class TestReconcile:
    async def test_a_job_whose_submit_answer_was_lost_is_found_by_external_ref(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """After a lost submit answer, reconcile finds the created job by external_ref."""
        ep_sim.faults.plan.next_lost_submit = 1
        spec = job_spec("req-lost")
        with pytest.raises(VendorUnavailable) as caught:
            await adapter.submit(spec)
        assert caught.value.outcome_unknown is True
        (created,) = ep_sim.jobs.values()

        found = await adapter.reconcile(spec)

        assert found.known is True and found.vendor_job_id == created.job_id
        assert found.status is Status.QUEUED or found.status is Status.RUNNING or found.status is Status.SUCCEEDED
        (lookup,) = [r for r in api_requests(ep_sim, "GET", JOBS)]
        assert lookup["query"] == {"filter": "eq(external_ref,req-lost)"}

    async def test_a_request_the_vendor_never_saw_is_known_absent(self, adapter: ElasticPathAdapter) -> None:
        """reconcile says known, with no job, when no job carries our external_ref."""
        await adapter.submit(job_spec("req-other", "TAX_RUN"))
        found = await adapter.reconcile(job_spec("req-never-sent"))
        assert found.known is True and found.vendor_job_id is None

    async def test_an_id_outside_the_filter_characters_is_found_by_paging(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A request id a filter cannot carry is matched by paging through the job list."""
        for i in range(150):
            ep_sim.new_job(f"other-{i}", {}, job_type="tax-run", created_wall=time.time())
        ep_sim.faults.plan.next_lost_submit = 1
        spec = job_spec("orders/2026:42", "TAX_RUN")
        with pytest.raises(VendorUnavailable):
            await adapter.submit(spec)
        ours = next(j for j in ep_sim.jobs.values() if j.match_key == "orders/2026:42")

        found = await adapter.reconcile(spec)

        assert found.vendor_job_id == ours.job_id
        lookups = api_requests(ep_sim, "GET", JOBS)
        assert [r["query"] for r in lookups] == [
            {"page[limit]": "100", "page[offset]": "0"},
            {"page[limit]": "100", "page[offset]": "100"},
        ]

    async def test_a_resubmit_after_a_lost_answer_adopts_the_existing_job(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """external_ref is unique: submitting again answers 409, and the adapter adopts its own job."""
        ep_sim.faults.plan.next_lost_submit = 1
        spec = job_spec("req-again", "TAX_RUN")
        with pytest.raises(VendorUnavailable):
            await adapter.submit(spec)
        (created,) = ep_sim.jobs.values()

        again = await adapter.submit(spec)

        assert again.vendor_job_id == created.job_id
        assert len(ep_sim.jobs) == 1


class TestContract:
    async def test_requests_match_the_documented_protocol(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """Token, create, get and list requests carry exactly the documented method, path, headers and body."""
        spec = job_spec("req-contract", "PAYMENT_RUN")
        submitted = await adapter.submit(spec)
        await adapter.poll(spec, submitted.vendor_job_id)
        await adapter.reconcile(spec)
        (token,) = list(ep_sim.tokens)

        token_call, create, get, lookup = ep_sim.requests
        assert (token_call["method"], token_call["path"]) == ("POST", "/oauth/access_token")
        assert token_call["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        assert "Authorization" not in token_call["headers"]
        assert parse_qs(token_call["body"]) == {
            "grant_type": ["client_credentials"],
            "client_id": ["demo-client"],
            "client_secret": ["demo-secret"],
        }

        assert (create["method"], create["path"], create["query"]) == ("POST", JOBS, {})
        assert create["headers"]["Authorization"] == f"Bearer {token}"
        assert create["headers"]["Content-Type"] == "application/json"
        assert create["headers"]["Accept"] == "application/json"
        assert json.loads(create["body"]) == {
            "data": {
                "type": "subscription_job",
                "attributes": {"job_type": "payment-run", "external_ref": "req-contract"},
            }
        }

        assert (get["method"], get["path"], get["body"]) == ("GET", f"{JOBS}/{submitted.vendor_job_id}", "")
        assert get["headers"]["Authorization"] == f"Bearer {token}"

        assert (lookup["method"], lookup["path"]) == ("GET", JOBS)
        assert lookup["query"] == {"filter": "eq(external_ref,req-contract)"}
        assert lookup["headers"]["Authorization"] == f"Bearer {token}"


class TestEndToEnd:
    async def test_a_billing_run_reaches_succeeded_with_its_report_announced(
        self, settings: Settings, ep_sim: ElasticPathSimulator
    ) -> None:
        """export.requests -> Elastic Path (simulated) -> SUCCEEDED and one FileReady for the stored report."""
        worker = Worker(settings, connections={"ep": ep_connection(ep_sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(ep_request("ep-e2e-1"))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ["ep-e2e-1"]), timeout=30)
        events = out.events("ep-e2e-1")
        assert [e["status"] for e in events][:2] == ["ACCEPTED", "SUBMITTED"]
        assert events[-1]["status"] == "SUCCEEDED"
        (announced,) = out.files_for("ep-e2e-1")
        assert announced["format"] == "json"
        assert announced["url"].startswith("file://")
        data = file_path(announced["url"]).read_bytes()
        assert announced["size_bytes"] == len(data)
        assert announced["sha256"] == hashlib.sha256(data).hexdigest()
        assert json.loads(data)["job_id"] == announced["vendor_job_id"] == events[-1]["vendor_job_id"]

    async def test_a_second_billing_run_is_queued_not_failed(
        self, settings: Settings, ep_sim: ElasticPathSimulator
    ) -> None:
        """Two billing runs for one store on a connection that does not run them one at a
        time itself (no exclusive kinds: e.g. another client also starts runs): the second
        is refused busy, waits, and then succeeds too."""
        ep_sim.timing.stages = (0.5, 0.5)
        policy = FAST_POLICY.model_copy(update={"busy_retry_s": 0.3})
        conn = ep_connection(ep_sim.base_url, policy=policy, exclusive_kinds=[])
        worker = Worker(settings, connections={"ep": conn})
        ids = ["ep-busy-1", "ep-busy-2"]
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            for rid in ids:
                await pub.send(ep_request(rid))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ids), timeout=30)
        assert [out.statuses(rid)[-1] for rid in ids] == ["SUCCEEDED", "SUCCEEDED"]
        assert all("FAILED" not in out.statuses(rid) for rid in ids)
        assert len(api_requests(ep_sim, "POST", JOBS)) >= 3  # at least one submit was refused busy
        assert sorted(j.match_key for j in ep_sim.jobs.values()) == ids


class TestReconcileCompleteness:
    """Only a complete answer may say "no such job"; a lookup cut short says "cannot tell"."""

    async def test_a_job_beyond_the_paging_limit_is_unknown_not_absent(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """Paging stops at page[offset] 10,000: a job past the last page read is "cannot tell"."""
        for i in range(10_100):  # exactly the 101 pages of 100 the offset limit lets a client read
            ep_sim.new_job(f"other-{i}", {}, job_type="tax-run", created_wall=time.time())
        spec = job_spec(derive_id("req-far", "20260101000000"), "TAX_RUN")
        ep_sim.new_job(spec.request_id, {}, job_type="tax-run", created_wall=time.time())

        found = await adapter.reconcile(spec)

        assert found.known is False and found.vendor_job_id is None
        offsets = [int(r["query"]["page[offset]"]) for r in api_requests(ep_sim, "GET", JOBS)]
        assert offsets[-1] == 10_000 and len(offsets) == 101

    async def test_paging_that_reaches_the_last_page_may_say_absent(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """A short last page ends the list: not found there is a complete "no such job"."""
        for i in range(120):
            ep_sim.new_job(f"other-{i}", {}, job_type="tax-run", created_wall=time.time())
        found = await adapter.reconcile(job_spec(derive_id("req-never", "20260101000000"), "TAX_RUN"))
        assert found.known is True and found.vendor_job_id is None

    async def test_a_replay_id_with_a_tilde_is_found_by_paging_not_by_filter(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator, probe: aiohttp.ClientSession
    ) -> None:
        """'~' (in every --force replay id) is outside the filter characters: EP refuses it
        in a filter, so the replay's job is found by paging."""
        for i in range(150):
            ep_sim.new_job(f"other-{i}", {}, job_type="tax-run", created_wall=time.time())
        spec = job_spec(derive_id("req-replayed", "20260101000000"), "TAX_RUN")
        ep_sim.faults.plan.next_lost_submit = 1
        with pytest.raises(VendorUnavailable):
            await adapter.submit(spec)
        ours = next(j for j in ep_sim.jobs.values() if j.match_key == spec.request_id)

        found = await adapter.reconcile(spec)

        assert found.known is True and found.vendor_job_id == ours.job_id
        lookups = api_requests(ep_sim, "GET", JOBS)
        assert all("filter" not in r["query"] for r in lookups)
        refused = await list_with_filter(ep_sim, probe, f"eq(external_ref,{spec.request_id})")
        assert refused.status == 400

    async def test_a_filter_that_was_not_applied_is_not_trusted_to_say_absent(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """An accepted filter answer holding other refs was not filtered by ours: page instead."""
        spec = job_spec("req-unfiltered", "TAX_RUN")
        ep_sim.new_job("someone-else", {}, job_type="tax-run", created_wall=time.time())
        ours = ep_sim.new_job(spec.request_id, {}, job_type="tax-run", created_wall=time.time())
        other = {
            "id": "11111111-2222-3333-4444-555555555555",
            "type": "subscription_job",
            "attributes": {"external_ref": "someone-else", "job_type": "tax-run", "status": "pending"},
        }
        ep_sim.answer_next(200, json.dumps({"data": [other]}))

        found = await adapter.reconcile(spec)

        assert found.vendor_job_id == ours.job_id


class TestSimulatorFilterRule:
    """The simulator applies the Filtering guide's character rule to the decoded value."""

    async def test_an_encoded_plus_is_accepted_and_matches_a_plus(
        self, ep_sim: ElasticPathSimulator, probe: aiohttp.ClientSession
    ) -> None:
        """'+' may be used when URL encoded (%2B)."""
        ours = ep_sim.new_job("a+b", {}, job_type="tax-run", created_wall=time.time())
        answer = await list_with_filter(ep_sim, probe, "eq(external_ref,a%2Bb)")
        assert answer.status == 200
        assert [j["id"] for j in (await answer.json(content_type=None))["data"]] == [ours.job_id]

    async def test_an_unencoded_plus_is_a_space(
        self, ep_sim: ElasticPathSimulator, probe: aiohttp.ClientSession
    ) -> None:
        ep_sim.new_job("a+b", {}, job_type="tax-run", created_wall=time.time())
        spaced = ep_sim.new_job("a b", {}, job_type="tax-run", created_wall=time.time())
        answer = await list_with_filter(ep_sim, probe, "eq(external_ref,a+b)")
        assert answer.status == 200
        assert [j["id"] for j in (await answer.json(content_type=None))["data"]] == [spaced.job_id]

    @pytest.mark.parametrize("value", ["a~b", "a%7Eb", "a/b", "a%2Cb", "a:b", "a%22b%22", "%C3%A9"])
    async def test_other_characters_are_refused(
        self, ep_sim: ElasticPathSimulator, probe: aiohttp.ClientSession, value: str
    ) -> None:
        answer = await list_with_filter(ep_sim, probe, f"eq(external_ref,{value})")
        assert answer.status == 400


class TestHostileJobIds:
    """A job id from an answer goes into the poll URL: it must name one job, and stay one segment."""

    async def test_a_job_id_with_slashes_is_polled_at_its_escaped_path(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        with pytest.raises(VendorRejected) as caught:
            await adapter.poll(job_spec("req-slashes"), "../jobs")
        assert caught.value.status == 400  # "job_uuid: must be a UUID", not the job list
        (poll,) = api_requests(ep_sim, "GET")
        assert poll["path"] == f"{JOBS}/../jobs"

    async def test_a_dot_segment_job_id_is_never_sent(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        """``..`` resolves even escaped: polling it would ask for /v2/subscriptions."""
        with pytest.raises(VendorRejected, match="cannot be used as a URL path segment"):
            await adapter.poll(job_spec("req-dots"), "..")
        assert not api_requests(ep_sim, "GET")

    async def test_a_created_job_named_dot_dot_is_malformed_and_may_have_acted(
        self, adapter: ElasticPathAdapter, ep_sim: ElasticPathSimulator
    ) -> None:
        created = {"data": {"id": "..", "type": "subscription_job", "attributes": {"status": "pending"}}}
        ep_sim.answer_next(201, json.dumps(created))
        with pytest.raises(MalformedAnswer) as caught:
            await adapter.submit(job_spec("req-dot-dot", "TAX_RUN"))
        assert caught.value.outcome_unknown is True
