"""The OpenGate adapter against its simulator: real HTTP on loopback, no mocks; and one
request through the real worker and broker."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from tests.conftest import FAST_POLICY, running
from worker.config import ConnectionConfig, SecretRef, Settings
from worker.engine.model import PollAnswered, Status
from worker.errors import (
    AuthFailed,
    ConfigError,
    InvalidRequest,
    MalformedAnswer,
    RateLimited,
    ResultTooLarge,
    VendorRejected,
    VendorUnavailable,
)
from worker.result_store import FileResultStore
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.opengate import OpenGateSimulator
from worker.testing import OutputReader, Publisher, eventually, terminal
from worker.vendors import Cancellable, HttpClient, JobSpec, build_adapter
from worker.vendors.opengate import OpenGateAdapter, validate

API_KEY = "demo-api-key"
JOBS = "/north/v80/operation/jobs"
FAST = Timing(stages=(0.1, 0.1, 0.1))
# Jobs that cannot move on while a test looks at them; switching back to FAST lets them.
FROZEN = Timing(stages=(3600.0, 3600.0, 3600.0))


# ---- helpers ---------------------------------------------------------------------------


def opengate_connection(base_url: str, **overrides: Any) -> ConnectionConfig:
    values: dict[str, Any] = {
        "vendor": "opengate",
        "base_url": base_url,
        "api_key": SecretRef(value=SecretStr(API_KEY)),
        "policy": FAST_POLICY,
        "rate_per_s": 200,
    }
    values.update(overrides)
    return ConnectionConfig(**values)


def jwt_connection(base_url: str, **overrides: Any) -> ConnectionConfig:
    values: dict[str, Any] = {
        "api_key": None,
        "username": "demo@example.com",
        "password": SecretRef(value=SecretStr("demo-password")),
        **overrides,
    }
    return opengate_connection(base_url, **values)


def og_job(entities: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """The job as the adapter receives it (ingest's ``jsonable`` of the Avro record)."""
    job: dict[str, Any] = {
        "type": "OpenGateJob",
        "operation": "REFRESH_INFO",
        "parameters_json": "{}",
        "target": {"type": "OpenGateEntities", "entities": entities or ["dev-1", "dev-2", "dev-3"]},
        "notify": False,
        "callback": None,
        "schedule_stop_delayed_ms": None,
        "operation_timeout_ms": None,
        "operation_retries": None,
        "operation_retries_delay_ms": None,
    }
    job.update(fields)
    return job


def spec(job: dict[str, Any], request_id: str = "req-1") -> JobSpec:
    return JobSpec(request_id, "acme", "og", job)


def devices(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def body(request: dict[str, Any]) -> Any:
    return json.loads(request["body"])


def calls(sim: OpenGateSimulator, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in sim.requests
        if (method is None or r["method"] == method) and (path is None or r["path"].startswith(path))
    ]


async def finish(adapter: OpenGateAdapter, job_spec: JobSpec, job_id: str) -> PollAnswered:
    """Poll until the job is terminal (bounded; no sleeps as synchronisation)."""
    answers: list[PollAnswered] = []

    async def done() -> bool:
        answers.append(await adapter.poll(job_spec, job_id))
        return answers[-1].status.terminal

    reached: bool = await eventually(done, timeout=10, what="job terminal")
    assert reached
    return answers[-1]


def artifact(url: str) -> bytes:
    assert url.startswith("file://")
    return Path(unquote(urlsplit(url).path)).read_bytes()


@pytest.fixture
async def sim() -> AsyncIterator[OpenGateSimulator]:
    simulator = OpenGateSimulator(timing=FAST, seed=11)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def store(tmp_path: Path) -> FileResultStore:
    return FileResultStore(tmp_path / "results")


def make_adapter(
    sim: OpenGateSimulator,
    session: HttpClient,
    store: FileResultStore | None = None,
    conn: ConnectionConfig | None = None,
    **options: Any,
) -> OpenGateAdapter:
    conn = conn or opengate_connection(sim.base_url, options=options)
    adapter = build_adapter("og", conn, session, result_store=store)
    assert isinstance(adapter, OpenGateAdapter)
    return adapter


# ---- submit, poll, collect ---------------------------------------------------------------


class TestCollect:
    async def test_finished_job_yields_one_jsonl_artifact_with_every_operation(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A FINISHED job's paged operations land in one JSON Lines file whose size and sha256 are announced."""
        adapter = make_adapter(sim, session, store, operations_page_size=2)
        job_spec = spec(og_job(devices(5)))
        submitted = await adapter.submit(job_spec)
        assert submitted.vendor_job_id in sim.jobs

        answer = await finish(adapter, job_spec, submitted.vendor_job_id)

        assert answer.status is Status.SUCCEEDED and answer.vendor_status == "FINISHED"
        assert answer.file is not None and answer.file.format == "jsonl"
        data = artifact(answer.file.url)
        assert answer.file.size_bytes == len(data)
        assert answer.file.sha256 == hashlib.sha256(data).hexdigest()
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [op["entityId"] for op in lines] == devices(5)
        assert {op["result"] for op in lines} == {"SUCCESSFUL"}
        assert answer.file.url.endswith("/opengate/req-1.jsonl")
        pages = [r["query"] for r in calls(sim, "GET", f"{JOBS}/{submitted.vendor_job_id}/operations")]
        assert pages == [{"start": "1", "size": "2"}, {"start": "2", "size": "2"}, {"start": "3", "size": "2"}]

    async def test_a_result_over_collect_max_operations_fails_the_job_without_reading_on(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """Operations are held in memory to build the artifact: past the bound the job
        fails for good (retrying cannot shrink it) and no more pages are read."""
        adapter = make_adapter(sim, session, store, operations_page_size=2, collect_max_operations=3)
        job_spec = spec(og_job(devices(9)))
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        with pytest.raises(ResultTooLarge) as failure:
            await finish(adapter, job_spec, job_id)

        assert not failure.value.retriable and "more than 3 operations" in str(failure.value)
        pages = calls(sim, "GET", f"{JOBS}/{job_id}/operations")
        assert len(pages) == 2  # 4 operations read: over the bound, page 3 of 5 never asked for

    async def test_some_operations_in_error_still_succeed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A job with a failed entity among successful ones succeeds; the artifact shows the error."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(["dev-1", "fail-2"]))
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        answer = await finish(adapter, job_spec, job_id)

        assert answer.status is Status.SUCCEEDED and answer.file is not None
        results = {op["entityId"]: op["result"] for op in map(json.loads, artifact(answer.file.url).splitlines())}
        assert results == {"dev-1": "SUCCESSFUL", "fail-2": "ERROR"}

    async def test_every_operation_in_error_is_failed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """FINISHED with every operation in error (summary counters) is FAILED, without an artifact."""
        sim.faults.plan.update({"next_fail": 1})
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(devices(3)))
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        answer = await finish(adapter, job_spec, job_id)

        assert answer.status is Status.FAILED and answer.vendor_status == "FINISHED"
        assert answer.file is None
        assert answer.error is not None and answer.error.code == "vendor_failed" and "3" in answer.error.message
        assert not calls(sim, "GET", f"{JOBS}/{job_id}/operations")

    async def test_tag_job_is_queued_while_initiating(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A tag job reads INITIATING (queued) first, then finishes with an operation per tagged entity."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(target={"type": "OpenGateTag", "tag": "meters-north"}))
        sim.timing = FROZEN
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        first = await adapter.poll(job_spec, job_id)
        sim.timing = FAST
        final = await finish(adapter, job_spec, job_id)

        assert (first.vendor_status, first.status) == ("INITIATING", Status.QUEUED)
        assert body(calls(sim, "POST", JOBS)[0])["job"]["request"]["target"] == {"append": {"tags": ["meters-north"]}}
        assert final.status is Status.SUCCEEDED and final.file is not None
        assert len(artifact(final.file.url).splitlines()) == sim.tag_size

    async def test_filter_job_sends_its_resource_type_on_the_url(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A filter target goes in the body as a filter and its resource type as ?resourceType=."""
        adapter = make_adapter(sim, session, store)
        the_filter = {"and": [{"eq": {"provision.device.model.name": "M-200"}}]}
        target = {"type": "OpenGateFilter", "filter_json": json.dumps(the_filter), "resource_type": "entity.device"}
        job_spec = spec(og_job(target=target))

        job_id = (await adapter.submit(job_spec)).vendor_job_id

        create = calls(sim, "POST", JOBS)[0]
        assert create["query"] == {"resourceType": "entity.device"}
        assert body(create)["job"]["request"]["target"] == {"filter": the_filter}
        assert (await finish(adapter, job_spec, job_id)).status is Status.SUCCEEDED

    async def test_empty_listing_of_a_finished_job_is_read_from_the_history(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """When /operations answers 204 for a FINISHED job, the operations come from the history search."""
        sim.listing_gone = True
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(devices(4)))
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        answer = await finish(adapter, job_spec, job_id)

        assert answer.status is Status.SUCCEEDED and answer.file is not None
        assert len(artifact(answer.file.url).splitlines()) == 4
        history = calls(sim, "POST", "/north/v80/search/entities/operations/history")
        assert body(history[0])["filter"] == {"and": [{"eq": {"jobId": job_id}}]}


class TestFinishedVerdict:
    @pytest.mark.parametrize(
        ("summary", "failed"),
        [
            ({"total": 3, "successful": 0, "error": 3}, True),
            ({"total": 3, "successful": 0, "error": 1, "cancelled": 2}, True),
            ({"total": 3, "error": 3}, True),
            ({"total": 3, "successful": 1, "error": 2}, False),
            ({"total": 0, "successful": 0}, False),
            ({}, False),
        ],
    )
    def test_counters_tell_a_job_where_nothing_succeeded(self, summary: dict[str, int], failed: bool) -> None:
        """The summary counters make a FINISHED job FAILED only when no operation succeeded."""
        from worker.vendors.opengate import Counters

        assert Counters.of(summary).none_succeeded is failed

    async def test_without_counters_the_operations_decide(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A summary without counters: operations all in ERROR make the job FAILED."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(200, json.dumps({"job": {"report": {"summary": {"status": "FINISHED"}}}}))
        errors = [{"entityId": e, "result": "ERROR"} for e in ("a", "b")]
        sim.answer_next(200, json.dumps({"operations": errors}))

        answer = await adapter.poll(spec(og_job()), "job-x")

        assert answer.status is Status.FAILED and answer.error is not None and answer.file is None

    async def test_finished_without_operations_is_failed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """FINISHED with no operation at all (the target matched nothing) has no artifact to announce."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(200, json.dumps({"job": {"report": {"summary": {"status": "FINISHED", "total": 0}}}}))
        sim.answer_next(204)

        answer = await adapter.poll(spec(og_job()), "job-x")

        assert answer.status is Status.FAILED and answer.error is not None
        assert answer.error.code == "no_operations"

    async def test_fewer_operations_than_counted_is_malformed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A partial listing is never announced as the job's result: it is a retriable MalformedAnswer."""
        adapter = make_adapter(sim, session, store)
        summary = {"status": "FINISHED", "total": 3, "successful": 3, "error": 0}
        sim.answer_next(200, json.dumps({"job": {"report": {"summary": summary}}}))
        sim.answer_next(200, json.dumps({"operations": [{"entityId": "a", "result": "SUCCESSFUL"}]}))
        sim.answer_next(204)  # the history has nothing more either

        with pytest.raises(MalformedAnswer) as caught:
            await adapter.poll(spec(og_job()), "job-x")

        assert "counts 3 operations" in caught.value.message and caught.value.retriable
        assert not list(store.root.rglob("*.jsonl"))


# ---- auth ------------------------------------------------------------------------------


class TestAuth:
    async def test_jwt_mode_logs_in_and_sends_a_bearer_token(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """With username/password the adapter logs in with email+password and sends the JWT, no X-ApiKey."""
        adapter = make_adapter(sim, session, store, conn=jwt_connection(sim.base_url))

        await adapter.submit(spec(og_job()))

        login, create = sim.requests
        assert (login["method"], login["path"]) == ("POST", "/north/v80/provision/users/login")
        assert body(login) == {"email": "demo@example.com", "password": "demo-password"}
        assert create["headers"]["Authorization"].startswith("Bearer ")
        assert "X-ApiKey" not in create["headers"]
        assert sim.token_valid(create["headers"]["Authorization"].split(" ", 1)[1])

    async def test_expired_jwt_is_renewed_once_and_the_call_retried(
        self, sim: OpenGateSimulator, session: HttpClient, probe: aiohttp.ClientSession, store: FileResultStore
    ) -> None:
        """A 401 for an expired JWT logs in again and repeats the call with the new token."""
        adapter = make_adapter(sim, session, store, conn=jwt_connection(sim.base_url))
        job_spec = spec(og_job())
        sim.timing = FROZEN
        job_id = (await adapter.submit(job_spec)).vendor_job_id
        await probe.post(f"{sim.base_url}/_sim/expire-tokens")

        answer = await adapter.poll(job_spec, job_id)

        assert (answer.vendor_status, answer.status) == ("SCHEDULED", Status.QUEUED)
        assert adapter.token is not None and adapter.token.fetches == 2 and sim.logins == 2
        refused, login, retried = sim.requests[-3:]
        assert refused["path"] == retried["path"] == f"{JOBS}/{job_id}"
        assert login["path"] == "/north/v80/provision/users/login"
        assert refused["headers"]["Authorization"] != retried["headers"]["Authorization"]

    async def test_refused_api_key_is_auth_failed_without_the_key(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """An API key answered with 401 cannot be renewed: AuthFailed (retriable), the key not in the message."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job())
        job_id = (await adapter.submit(job_spec)).vendor_job_id
        sim.faults.plan.update({"next_401": 1})

        with pytest.raises(AuthFailed) as caught:
            await adapter.poll(job_spec, job_id)

        assert caught.value.retriable and API_KEY not in str(caught.value)

    async def test_wrong_password_is_auth_failed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A login refused with 401 is AuthFailed, and the password never appears in the error."""
        conn = jwt_connection(sim.base_url, password=SecretRef(value=SecretStr("not-the-password")))
        adapter = make_adapter(sim, session, store, conn=conn)

        with pytest.raises(AuthFailed) as caught:
            await adapter.submit(spec(og_job()))

        assert "not-the-password" not in str(caught.value)
        assert not sim.jobs

    def test_jwt_lifetime_comes_from_its_exp_claim(self) -> None:
        """The login answer has no expires_in: the JWT's exp is read, an opaque token gets the default."""
        from worker.vendors.opengate import jwt_lifetime_s

        claims = base64.urlsafe_b64encode(json.dumps({"exp": 1_000_120}).encode()).decode().rstrip("=")
        assert jwt_lifetime_s(f"eyJhbGciOiJIUzI1NiJ9.{claims}.sig", 3600, now=1_000_000) == 120
        assert jwt_lifetime_s("opaque-token", 3600, now=1_000_000) == 3600

    def test_a_connection_without_credentials_is_a_config_error(self) -> None:
        """Neither api_key nor username/password: the adapter refuses to start."""
        conn = opengate_connection("http://127.0.0.1:9", api_key=None)
        with pytest.raises(ConfigError):
            OpenGateAdapter(conn, build_http(conn))


def build_http(conn: ConnectionConfig) -> Any:
    from worker.vendors.http import VendorHttp

    return VendorHttp(None, connection="og", base_url=conn.base_url)  # type: ignore[arg-type]


# ---- rate limits and malformed answers -------------------------------------------------


class TestErrors:
    async def test_429_is_rate_limited_with_its_retry_after(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A 429 on submit is RateLimited carrying Retry-After; no job was created and none is assumed."""
        sim.faults.plan.update({"next_429": 1, "retry_after_s": 7})
        adapter = make_adapter(sim, session, store)

        with pytest.raises(RateLimited) as caught:
            await adapter.submit(spec(og_job()))

        assert caught.value.retry_after == 7.0
        assert caught.value.outcome_unknown is False
        assert not sim.jobs

    async def test_header_names_are_case_insensitive(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """HTTP/2 gateways send lower-case header names: `retry-after` is still Retry-After."""
        sim.answer_next(429, "{}", **{"retry-after": "9"})
        adapter = make_adapter(sim, session, store)

        with pytest.raises(RateLimited) as caught:
            await adapter.submit(spec(og_job()))

        assert caught.value.retry_after == 9.0

    async def test_html_page_is_malformed(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """An HTML error page with status 200 is a MalformedAnswer quoting the page."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job())
        job_id = (await adapter.submit(job_spec)).vendor_job_id
        sim.faults.plan.update({"next_malformed": 1})

        with pytest.raises(MalformedAnswer) as caught:
            await adapter.poll(job_spec, job_id)

        assert "Gateway error" in caught.value.message and caught.value.retriable

    @pytest.mark.parametrize(
        ("answer", "expected"),
        [
            (b"", "empty body"),
            (b"{}", "without report.summary.status"),
            (b"[]", "expected a JSON object"),
            (b'{"job": {"report": {"summary": {"total": 3}}}}', "without report.summary.status"),
            (b'{"job": {"report": {"summary": {"status": 7}}}}', "without report.summary.status"),
        ],
    )
    async def test_unexpected_poll_answers_are_malformed(
        self,
        sim: OpenGateSimulator,
        session: HttpClient,
        store: FileResultStore,
        answer: bytes,
        expected: str,
    ) -> None:
        """Empty bodies and JSON without a job status are MalformedAnswer, never a crash or a status."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(200, answer)

        with pytest.raises(MalformedAnswer) as caught:
            await adapter.poll(spec(og_job()), "some-job")

        assert expected in caught.value.message

    async def test_malformed_excerpt_is_redacted(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A vendor body quoted in an error has its secrets masked."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(
            200, '<html>proxy error for apikey=s3cr3t-value and "jwt": "eyJabc.def.ghi"</html>', "text/html"
        )

        with pytest.raises(MalformedAnswer) as caught:
            await adapter.poll(spec(og_job()), "some-job")

        assert "s3cr3t-value" not in caught.value.message and "eyJabc" not in caught.value.message
        assert "proxy error" in caught.value.message

    async def test_submit_answer_without_a_job_id_is_malformed_with_unknown_outcome(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A 201 without Location or id may still have created a job: the outcome is unknown."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(201, b"")

        with pytest.raises(MalformedAnswer) as caught:
            await adapter.submit(spec(og_job()))

        assert caught.value.outcome_unknown is True

    async def test_job_id_in_the_body_is_accepted(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """Without a Location header, an id in the answer's body is the job id."""
        adapter = make_adapter(sim, session, store)
        sim.answer_next(201, b'{"id": "0a1b2c"}')

        assert (await adapter.submit(spec(og_job()))).vendor_job_id == "0a1b2c"

    async def test_server_error_on_submit_leaves_the_outcome_unknown(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A 503 on the create is retriable and may have created a job."""
        sim.faults.plan.update({"next_5xx": 1})
        adapter = make_adapter(sim, session, store)

        with pytest.raises(VendorUnavailable) as caught:
            await adapter.submit(spec(og_job()))

        assert caught.value.outcome_unknown is True and caught.value.status == 503


# ---- more than 100 entities ------------------------------------------------------------


class TestChunking:
    async def test_more_entities_than_the_limit_are_appended_then_activated(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """250 entities: create inactive with 100, PUT 100, PUT 50, then PUT active:true."""
        adapter = make_adapter(sim, session, store)
        entities = devices(250)
        job_spec = spec(og_job(entities))

        job_id = (await adapter.submit(job_spec)).vendor_job_id

        create, *puts = sim.requests
        created = body(create)["job"]["request"]
        assert (create["method"], created["active"], created["target"]) == (
            "POST",
            False,
            {"append": {"entities": entities[:100]}},
        )
        assert [(p["method"], p["path"]) for p in puts] == [("PUT", f"{JOBS}/{job_id}")] * 3
        assert [body(p) for p in puts] == [
            {"job": {"request": {"target": {"append": {"entities": entities[100:200]}}}}},
            {"job": {"request": {"target": {"append": {"entities": entities[200:]}}}}},
            {"job": {"request": {"active": True}}},
        ]
        assert sim.og(job_id).entities == entities and sim.og(job_id).active
        answer = await finish(adapter, job_spec, job_id)
        assert answer.file is not None and len(artifact(answer.file.url).splitlines()) == 250

    async def test_the_entity_limit_is_a_connection_option(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """options.max_entities=10 splits 25 entities into 10 + 10 + 5."""
        adapter = make_adapter(sim, session, store, max_entities=10)

        await adapter.submit(spec(og_job(devices(25))))

        sizes = [
            len(body(r)["job"]["request"].get("target", {}).get("append", {}).get("entities", [])) for r in sim.requests
        ]
        assert sizes == [10, 10, 5, 0]
        assert body(sim.requests[-1]) == {"job": {"request": {"active": True}}}

    async def test_long_entity_ids_are_chunked_by_bytes(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """90 entities of 4 KB each (over 300 KB together) go in bodies that each stay under the limit."""
        adapter = make_adapter(sim, session, store)
        entities = [f"{i:03d}-" + "x" * 4000 for i in range(90)]

        job_id = (await adapter.submit(spec(og_job(entities)))).vendor_job_id

        assert len(sim.requests) >= 3
        assert all(len(r["body"].encode()) <= 300 * 1024 for r in sim.requests)
        assert sim.og(job_id).entities == entities and sim.og(job_id).active

    async def test_refused_append_removes_the_inactive_job(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A 400 on an append fails the submit for good and deletes the half-built job."""
        sim.fail_puts = {1: 400}
        adapter = make_adapter(sim, session, store)

        with pytest.raises(VendorRejected):
            await adapter.submit(spec(og_job(devices(150))))

        (job_id,) = sim.jobs
        assert [(r["method"], r["path"]) for r in sim.requests[1:]] == [
            ("PUT", f"{JOBS}/{job_id}"),
            ("DELETE", f"{JOBS}/{job_id}"),
        ]
        assert sim.jobs[job_id].cancelled_at is not None

    async def test_failed_append_is_completed_by_reconcile(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A 503 on the second append leaves an inactive job; reconcile appends the rest and activates it."""
        sim.fail_puts = {2: 503}
        adapter = make_adapter(sim, session, store)
        entities = devices(250)
        job_spec = spec(og_job(entities))

        with pytest.raises(VendorUnavailable) as caught:
            await adapter.submit(job_spec)
        assert caught.value.outcome_unknown is True
        (job_id,) = sim.jobs
        assert not sim.og(job_id).active

        found = await adapter.reconcile(job_spec)

        assert (found.known, found.vendor_job_id) == (True, job_id)
        og = sim.og(job_id)
        assert og.entities == entities and og.active
        assert og.duplicated == entities[100:200]  # the chunk that had landed, sent again
        assert (await finish(adapter, job_spec, job_id)).status is Status.SUCCEEDED


# ---- 300 KB ---------------------------------------------------------------------------


class TestBodyLimit:
    def test_validate_refuses_a_body_over_300_kb(self) -> None:
        """Parameters that make the body larger than 300 KB are refused at ingest as oversize."""
        conn = opengate_connection("http://og.invalid")
        job = og_job(parameters_json=json.dumps({"blob": "x" * 310_000}))

        with pytest.raises(InvalidRequest) as caught:
            validate(job, 0, conn)

        assert caught.value.reason_code == "oversize"

    async def test_submit_refuses_an_oversize_body_without_sending_it(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A body over the limit reaching submit is VendorRejected and nothing is sent."""
        adapter = make_adapter(sim, session, store)

        with pytest.raises(VendorRejected):
            await adapter.submit(spec(og_job(parameters_json=json.dumps({"blob": "x" * 310_000}))))

        assert sim.requests == []

    async def test_the_simulator_refuses_bodies_over_its_limit(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """With the adapter's limit raised above OpenGate's, the vendor's 400 is VendorRejected."""
        adapter = make_adapter(sim, session, store, max_body_bytes=1_000_000)

        with pytest.raises(VendorRejected) as caught:
            await adapter.submit(spec(og_job(parameters_json=json.dumps({"blob": "x" * 310_000}))))

        assert caught.value.status == 400 and "exceeds the limit" in caught.value.message
        assert not sim.jobs

    async def test_the_simulator_refuses_more_than_100_entities(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """With the adapter's entity limit raised, OpenGate's limit of 100 answers 400."""
        adapter = make_adapter(sim, session, store, max_entities=150)

        with pytest.raises(VendorRejected) as caught:
            await adapter.submit(spec(og_job(devices(101))))

        assert caught.value.status == 400 and "limit is 100" in caught.value.message


# ---- validation ------------------------------------------------------------------------


class TestValidate:
    @pytest.mark.parametrize(
        "changes",
        [
            {"operation": " "},
            {"parameters_json": "[1, 2]"},
            {"parameters_json": "{not json"},
            {"target": {"type": "OpenGateEntities", "entities": []}},
            {"target": {"type": "OpenGateEntities", "entities": ["ok", ""]}},
            {"target": {"type": "OpenGateTag", "tag": ""}},
            {"target": {"type": "OpenGateFilter", "filter_json": "{}", "resource_type": None}},
            {"target": {"type": "OpenGateFilter", "filter_json": '{"eq": {"a": 1}}', "resource_type": "entity.car"}},
            {"callback": "ftp://example.com/hook"},
            {"operation_retries": -1},
        ],
    )
    def test_what_opengate_would_refuse_is_an_invalid_request(self, changes: dict[str, Any]) -> None:
        """Malformed operations, parameters, targets and numbers are refused before any call."""
        with pytest.raises(InvalidRequest):
            validate(og_job(**changes), 0, opengate_connection("http://og.invalid"))

    def test_unknown_options_are_a_config_error(self) -> None:
        """A misspelt connection option is refused rather than silently ignored."""
        with pytest.raises(ConfigError):
            validate(og_job(), 0, opengate_connection("http://og.invalid", options={"max_entity": 5}))


class TestCallback:
    """The callback OpenGate calls when the job ends: http(s), a host, no credentials, bounded."""

    @pytest.mark.parametrize(
        ("callback", "reason"),
        [
            ("ftp://hooks.example.com/og", "http(s) URL with a host"),
            ("javascript:alert(1)", "http(s) URL with a host"),
            ("https:///og", "http(s) URL with a host"),
            ("https://user:secret@hooks.example.com/og", "must not carry credentials"),
            ("https://token@hooks.example.com/og", "must not carry credentials"),
            ("https://hooks.example.com:99999/og", "not a valid URL"),
            ("https://[::1/og", "not a valid URL"),
            ("https://hooks.example.com/og hook", "whitespace or control characters"),
            ("https://hooks.example.com/og\r\nX-Injected: 1", "whitespace or control characters"),
            ("https://hooks.example.com/" + "a" * 2_048, "URL of 1-2048 characters"),
            ("", "URL of 1-2048 characters"),
        ],
    )
    def test_a_hostile_callback_is_refused_with_its_reason(self, callback: str, reason: str) -> None:
        with pytest.raises(InvalidRequest, match=re.escape(reason)):
            validate(og_job(callback=callback), 0, opengate_connection("http://og.invalid"))

    @pytest.mark.parametrize(
        "callback", ["https://hooks.example.com/og?job=1", "http://10.0.0.7:8080/hook", "https://hooks.example.com"]
    )
    def test_an_ordinary_callback_is_sent_as_given(self, callback: str) -> None:
        validate(og_job(callback=callback), 0, opengate_connection("http://og.invalid"))


class TestHostileJobIds:
    @pytest.mark.parametrize("job_id", ["..", "."])
    async def test_a_dot_segment_job_id_is_never_sent(
        self, sim: OpenGateSimulator, session: HttpClient, job_id: str
    ) -> None:
        """``..`` resolves even escaped: polling it would ask /operation, not a job."""
        adapter = make_adapter(sim, session)
        with pytest.raises(VendorRejected, match="cannot be used as a URL path segment"):
            await adapter.poll(spec(og_job()), job_id)
        assert not calls(sim, "GET")

    async def test_a_job_id_with_slashes_is_polled_at_its_escaped_path(
        self, sim: OpenGateSimulator, session: HttpClient
    ) -> None:
        """It names no job: the simulator answers ``{}``, as real tenants do for an unknown id."""
        adapter = make_adapter(sim, session)
        with pytest.raises(MalformedAnswer, match=re.escape("without report.summary.status: {}")):
            await adapter.poll(spec(og_job()), "../../search/jobs")
        (poll,) = calls(sim, "GET")
        assert poll["path"] == f"{JOBS}/../../search/jobs"  # one segment: decoded by the simulator

    async def test_a_location_naming_a_dot_segment_is_malformed_and_may_have_acted(
        self, sim: OpenGateSimulator, session: HttpClient
    ) -> None:
        adapter = make_adapter(sim, session)
        sim.answer_next(201, "", Location=f"{JOBS}/%2E%2E")
        with pytest.raises(MalformedAnswer) as caught:
            await adapter.submit(spec(og_job()))
        assert caught.value.outcome_unknown is True


# ---- reconcile -------------------------------------------------------------------------


class TestReconcile:
    async def test_lost_submit_answer_is_found_by_its_user_notes(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """The job created by a submit whose answer was dropped is found by searching, not created again."""
        sim.faults.plan.update({"next_lost_submit": 1})
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(), "req-lost")

        with pytest.raises(VendorUnavailable) as caught:
            await adapter.submit(job_spec)
        assert caught.value.outcome_unknown is True

        found = await adapter.reconcile(job_spec)

        (job_id,) = sim.jobs
        assert (found.known, found.vendor_job_id) == (True, job_id)
        search = calls(sim, "POST", "/north/v80/search/jobs")[0]
        assert body(search) == {
            "filter": {"and": [{"eq": {"operationName": "REFRESH_INFO"}}]},
            "limit": {"size": 1000, "start": 1},
        }
        assert len(calls(sim, "POST", JOBS)) == 1

    async def test_absent_job_is_known_absent(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """No job carries our notes (the search answers 204): known, without an id."""
        adapter = make_adapter(sim, session, store)
        await adapter.submit(spec(og_job(), "someone-else"))

        found = await adapter.reconcile(spec(og_job(), "req-absent"))

        assert (found.known, found.vendor_job_id) == (True, None)

    async def test_unread_pages_make_the_answer_unknown(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """When more matching jobs exist than the pages it may read, the adapter says it cannot tell."""
        adapter = make_adapter(sim, session, store, search_page_size=1, search_max_pages=2)
        for n in range(3):
            await adapter.submit(spec(og_job(), f"other-{n}"))

        found = await adapter.reconcile(spec(og_job(), "req-unknown"))

        assert found.known is False
        assert len(calls(sim, "POST", "/north/v80/search/jobs")) == 2


# ---- cancel ----------------------------------------------------------------------------


class TestCancel:
    async def test_cancel_is_cancelling_then_cancelled(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """DELETE answers CANCELLING (still running for us); polls then read CANCELLED."""
        adapter = make_adapter(sim, session, store)
        assert isinstance(adapter, Cancellable)
        job_spec = spec(og_job())
        sim.timing = FROZEN
        job_id = (await adapter.submit(job_spec)).vendor_job_id

        answer = await adapter.cancel(job_spec, job_id)
        middle = await adapter.poll(job_spec, job_id)
        sim.timing = FAST

        assert (answer.vendor_status, answer.status) == ("CANCELLING", Status.RUNNING)
        assert calls(sim, "DELETE")[0]["path"] == f"{JOBS}/{job_id}"
        assert (middle.vendor_status, middle.status) == ("CANCELLING", Status.RUNNING)
        final = await finish(adapter, job_spec, job_id)
        assert (final.vendor_status, final.status) == ("CANCELLED", Status.CANCELLED)

    async def test_cancelling_a_finished_job_is_rejected(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """A FINISHED job cannot be cancelled: OpenGate's 400 is VendorRejected."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job())
        job_id = (await adapter.submit(job_spec)).vendor_job_id
        await finish(adapter, job_spec, job_id)

        with pytest.raises(VendorRejected):
            await adapter.cancel(job_spec, job_id)


# ---- contract: the exact HTTP the seed describes ---------------------------------------


class TestContract:
    async def test_unset_fields_are_left_out_and_cancel_is_a_bare_delete(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """Optional fields not set are not sent (no nulls); cancel is a DELETE of the job without a body."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(og_job(["dev-9"]), "req-cancel")
        sim.timing = FROZEN

        job_id = (await adapter.submit(job_spec)).vendor_job_id
        await adapter.cancel(job_spec, job_id)

        create, delete = sim.requests
        assert body(create) == {
            "job": {
                "request": {
                    "name": "REFRESH_INFO",
                    "parameters": {},
                    "active": True,
                    "notify": False,
                    "userNotes": "export-worker:req-cancel",
                    "target": {"append": {"entities": ["dev-9"]}},
                }
            }
        }
        assert (delete["method"], delete["path"], delete["query"], delete["body"]) == (
            "DELETE",
            f"{JOBS}/{job_id}",
            {},
            "",
        )
        assert delete["headers"]["X-ApiKey"] == API_KEY

    async def test_full_job_request_body(
        self, sim: OpenGateSimulator, session: HttpClient, store: FileResultStore
    ) -> None:
        """Every optional field of the seed's job body is sent, in OpenGate's names and units."""
        adapter = make_adapter(sim, session, store)
        job_spec = spec(
            og_job(
                ["dev-1", "dev-2"],
                operation="REBOOT_EQUIPMENT",
                parameters_json='{"type": "HARDWARE"}',
                notify=True,
                callback="https://hooks.example.com/og",
                schedule_stop_delayed_ms=90_000,
                operation_timeout_ms=85_000,
                operation_retries=2,
                operation_retries_delay_ms=1_000,
            ),
            "req-contract",
        )

        job_id = (await adapter.submit(job_spec)).vendor_job_id
        await finish(adapter, job_spec, job_id)
        await adapter.reconcile(job_spec)

        create, *rest = sim.requests
        assert (create["method"], create["path"], create["query"]) == ("POST", JOBS, {})
        assert create["headers"]["X-ApiKey"] == API_KEY
        assert create["headers"]["Content-Type"].startswith("application/json")
        assert "Authorization" not in create["headers"]
        assert body(create) == {
            "job": {
                "request": {
                    "name": "REBOOT_EQUIPMENT",
                    "parameters": {"type": "HARDWARE"},
                    "active": True,
                    "notify": True,
                    "callback": "https://hooks.example.com/og",
                    "userNotes": "export-worker:req-contract",
                    "schedule": {"stop": {"delayed": 90000}},
                    "operationParameters": {"timeout": 85000, "retries": 2, "retriesDelay": 1000},
                    "target": {"append": {"entities": ["dev-1", "dev-2"]}},
                }
            }
        }
        seen = [(r["method"], r["path"], r["query"]) for r in rest]
        poll: tuple[str, str, dict[str, str]] = ("GET", f"{JOBS}/{job_id}", {})
        polls = next(i for i, call in enumerate(seen) if call != poll)
        assert polls >= 1
        assert seen[polls:] == [
            ("GET", f"{JOBS}/{job_id}/operations", {"start": "1", "size": "1000"}),
            ("POST", "/north/v80/search/jobs", {}),
            ("GET", f"{JOBS}/{job_id}", {}),
        ]
        for request in sim.requests:
            assert request["headers"]["X-ApiKey"] == API_KEY
            assert request["headers"]["Accept"] == "application/json"
        assert [r["body"] for r in rest if r["method"] == "GET"] == [""] * (len(rest) - 1)
        assert body(rest[-2]) == {
            "filter": {"and": [{"eq": {"operationName": "REBOOT_EQUIPMENT"}}]},
            "limit": {"size": 1000, "start": 1},
        }


# ---- the simulator's own rules ---------------------------------------------------------


class TestSimulator:
    async def test_a_started_job_cannot_be_changed(
        self, sim: OpenGateSimulator, session: HttpClient, probe: aiohttp.ClientSession, store: FileResultStore
    ) -> None:
        """Appending to an active job is a 400 with an errors body; the target stays as it was."""
        adapter = make_adapter(sim, session, store)
        job_id = (await adapter.submit(spec(og_job(["dev-1"])))).vendor_job_id
        change = {"job": {"request": {"target": {"append": {"entities": ["dev-2"]}}}}}

        async with probe.put(f"{sim.base_url}{JOBS}/{job_id}", json=change, headers={"X-ApiKey": API_KEY}) as put:
            status, answer = put.status, await put.json()

        assert status == 400 and answer["errors"][0]["message"].startswith("a job can only be updated")
        assert sim.og(job_id).entities == ["dev-1"]

    async def test_search_refuses_fields_it_cannot_filter_on(
        self, sim: OpenGateSimulator, probe: aiohttp.ClientSession
    ) -> None:
        """Like OpenGate, search/jobs refuses a filter on userNotes: the reason the adapter filters by name."""
        query = {"filter": {"and": [{"eq": {"userNotes": "export-worker:x"}}]}}

        async with probe.post(
            f"{sim.base_url}/north/v80/search/jobs", json=query, headers={"X-ApiKey": API_KEY}
        ) as search:
            status, answer = search.status, await search.json()

        assert status == 400 and answer["errors"][0] == {
            "code": "0x050014",
            "message": "Field in filter unknown",
            "context": [{"name": "field", "value": "userNotes"}],
        }

    async def test_calls_without_credentials_are_refused(
        self, sim: OpenGateSimulator, probe: aiohttp.ClientSession
    ) -> None:
        """Neither X-ApiKey nor a valid JWT: 401, and no job is created."""
        async with probe.post(f"{sim.base_url}{JOBS}", json={}, headers={"X-ApiKey": "wrong"}) as create:
            assert create.status == 401
        assert not sim.jobs

    def test_sample_job_is_a_valid_request(self) -> None:
        """The demo's sample job encodes as an ExportRequested and passes validation."""
        from worker.codec import Codec
        from worker.ingest import jsonable
        from worker.simulators.opengate import demo_connection, sample_job

        record = {**opengate_request("demo", ["x"]), "job": sample_job()}
        codec = Codec()
        decoded = codec.decode("ExportRequested", codec.encode("ExportRequested", record, topic="t"))
        name, job = decoded["job"]
        assert name == "export.v1.OpenGateJob"
        validate(jsonable(job), 0, demo_connection("http://og.invalid"))


# ---- through the real worker and broker ------------------------------------------------


def opengate_request(request_id: str, entities: list[str], *, connection: str = "opengate") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "tenant": "acme",
        "connection": connection,
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {},
        "job": (
            "export.v1.OpenGateJob",
            {
                "operation": "REFRESH_INFO",
                "parameters_json": "{}",
                "target": ("export.v1.OpenGateEntities", {"entities": entities}),
                "notify": False,
                "callback": None,
                "schedule_stop_delayed_ms": None,
                "operation_timeout_ms": None,
                "operation_retries": None,
                "operation_retries_delay_ms": None,
            },
        ),
        "replay_of": None,
    }


class TestPipeline:
    async def test_request_reaches_succeeded_with_the_collected_artifact(
        self, settings: Settings, sim: OpenGateSimulator
    ) -> None:
        """An OpenGate request is submitted, polled to FINISHED, collected, and its artifact announced once."""
        worker = Worker(settings, connections={"opengate": opengate_connection(sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(opengate_request("og-1", devices(120)))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ["og-1"]), timeout=30)

        events = out.events("og-1")
        assert [e["status"] for e in events][:2] == ["ACCEPTED", "SUBMITTED"]
        assert events[-1]["status"] == "SUCCEEDED"
        (file,) = out.files_for("og-1")
        (job_id,) = sim.jobs
        assert file["vendor_job_id"] == job_id and file["format"] == "jsonl"
        data = artifact(file["url"])
        assert file["size_bytes"] == len(data) and file["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(data.splitlines()) == 120

    async def test_lost_submit_answer_is_reconciled_not_resubmitted(
        self, settings: Settings, sim: OpenGateSimulator
    ) -> None:
        """When the create's answer is dropped, the worker finds the job by search and creates no second one."""
        sim.faults.plan.update({"next_lost_submit": 1})
        worker = Worker(settings, connections={"opengate": opengate_connection(sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(opengate_request("og-lost", devices(3)))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ["og-lost"]), timeout=30)

        assert out.events("og-lost")[-1]["status"] == "SUCCEEDED"
        assert len(sim.jobs) == 1 and sim.faults.injected.get("lost_submit") == 1
        assert len(calls(sim, "POST", JOBS)) == 1
        assert calls(sim, "POST", "/north/v80/search/jobs")
