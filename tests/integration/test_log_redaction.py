"""Secrets never leave the worker: not in log lines, status events, dead letters or
exception text, whatever the vendor sends back.

The worker runs with the real logging pipeline (``configure_logging``, JSON on stderr,
captured) against an Itron simulator whose answers carry signed links, which expires
a token once (401, refresh) and which echoes the caller's bearer token, client secret
and a password back in an error. One adapter call crashes with the credentials in its
message. Then every captured line and every output record is searched for the secret
values themselves.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from tests.conftest import itron_connection, running
from tests.log_capture import json_lines
from worker.config import SecretRef, Settings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import Output, OutputReader, Publisher, itron_request, terminal
from worker.tracing import Tracing
from worker.vendors.base import JobSpec
from worker.vendors.itron import correlation_id

Lines = Callable[[], list[str]]


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    """The project's logging pipeline, rendering JSON to a captured stderr; returns a
    function giving every line written so far (``tests.log_capture``)."""
    with json_lines(monkeypatch, "debug") as stderr:
        # Module-level loggers keep the configuration of their first use
        # (cache_logger_on_first_use): give each one a fresh proxy for this test.
        for module in list(sys.modules.values()):
            proxy = getattr(module, "log", None)
            if getattr(module, "__name__", "").startswith("worker") and isinstance(proxy, type(structlog.get_logger())):
                monkeypatch.setattr(module, "log", structlog.get_logger(*(proxy._logger_factory_args or ())))

        def read() -> list[str]:
            return [line for line in stderr.getvalue().splitlines() if line.strip()]

        yield read


def parsed(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    not_json = 0
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            not_json += 1
    assert not_json == 0, f"{not_json} stderr lines are not JSON log lines"
    return out


def assert_no_secrets(where: str, texts: Iterable[str], secret_values: Mapping[str, Iterable[str]]) -> None:
    """Fail naming the kind of secret and where it was found, never showing its value."""
    found = []
    for i, text in enumerate(texts):
        for kind, values in secret_values.items():
            if any(v and v in text for v in values):
                found.append(f"{kind} in {where} #{i}")
    if found:
        pytest.fail("secrets leaked: " + ", ".join(found), pytrace=False)


class LeakyItron(ItronSimulator):
    """The Itron simulator, remembering every token and link signature it hands out,
    with scripted first polls for chosen jobs (by Itron-CorrelationId):

    * ``"link-without-status"``: a broken answer that carries a signed link;
    * ``"echo"``: a 400 whose body echoes the caller's credentials, as some gateways do.
    """

    def __init__(self, *, password: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.password = password
        self.issued: list[str] = []
        self.signatures: list[str] = []
        self.scripts: dict[str, str] = {}

    def issue_token(self) -> tuple[str, int]:
        token, ttl = super().issue_token()
        self.issued.append(token)
        return token, ttl

    def _sign(self, name: str, se: str) -> str:
        sig = super()._sign(name, se)
        self.signatures.append(sig)
        return sig

    async def poll(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        script = self.scripts.pop(job.match_key, None) if job is not None else None
        if job is not None and script == "link-without-status":
            return web.json_response({"jobId": job.job_id, "DownloadUri": self._link(job, time.monotonic())})
        if script == "echo":
            authorization = request.headers.get("Authorization", "")
            echoed = {
                "message": f"request refused for {authorization}",
                "credentials": json.dumps({"username": "svc-export", "password": self.password}),
                "headers": {"Authorization": authorization},
                "form": f"grant_type=client_credentials&client_id={self.client_id}&client_secret={self.client_secret}",
            }
            return web.json_response(echoed, status=400)
        return await super().poll(request)


@dataclass
class Run:
    sim: LeakyItron
    worker: Worker
    output: Output
    client_secret: str
    password: str
    ids: dict[str, str]
    tokens_requested: int
    spans: InMemorySpanExporter

    def secret_values(self) -> dict[str, list[str]]:
        return {
            "access token": list(self.sim.issued),
            "client secret": [self.client_secret],
            "sig": list(self.sim.signatures),
            "password": [self.password],
        }


def cid(request_id: str) -> str:
    return correlation_id(JobSpec(request_id, "acme", "itron", {}))


@pytest.fixture
async def leaky_run(settings: Settings, json_logs: Lines, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Run]:
    client_secret = f"cs-{secrets.token_hex(12)}"
    password = f"pw-{secrets.token_hex(12)}"
    sim = LeakyItron(client_secret=client_secret, password=password, timing=Timing(stages=(0.1, 0.1, 0.1)), seed=4)
    await sim.start()
    ids = {kind: f"{kind}-{secrets.token_hex(4)}" for kind in ("links", "echo", "crash")}
    sim.scripts = {cid(ids["links"]): "link-without-status", cid(ids["echo"]): "echo"}
    conn = itron_connection(sim.base_url, client_secret=SecretRef(value=SecretStr(client_secret)))
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    worker = Worker(settings, connections={"itron": conn}, tracing=Tracing(provider))
    try:
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            adapter: Any = worker.connections["itron"].adapter
            real_poll = adapter.poll
            crashed: list[str] = []

            async def buggy_poll(spec: JobSpec, vendor_job_id: str) -> Any:
                """An adapter bug whose message dumps the credentials it worked with."""
                if spec.request_id == ids["crash"] and not crashed:
                    crashed.append(vendor_job_id)
                    headers = await adapter.http.auth.headers(adapter.http)
                    form = {"client_id": conn.client_id, "client_secret": client_secret}
                    raise RuntimeError(f"cannot rebuild the call from {headers!r} and {form!r}")
                return await real_poll(spec, vendor_job_id)

            monkeypatch.setattr(adapter, "poll", buggy_poll)
            sim.faults.plan.next_401 = 1  # the first API call finds its token expired
            for request_id in ids.values():
                await pub.send(itron_request(request_id))
            await pub.flush()
            output = await reader.wait_for(lambda o: terminal(o, ids.values()), what="all terminal")
            assert crashed, "the adapter bug was not reached"
            tokens_requested = sum(1 for q in sim.requests if q["path"] == "/connect/token")
            yield Run(sim, worker, output, client_secret, password, ids, tokens_requested, spans)
    finally:
        await sim.stop()


class TestNoSecretLeaves:
    async def test_logs_events_and_exceptions_hold_no_secret(self, leaky_run: Run, json_logs: Lines) -> None:
        """Tokens, the client secret, link signatures and passwords appear nowhere."""
        run = leaky_run
        lines = json_logs()
        secret_values = run.secret_values()
        assert_no_secrets("log line", lines, secret_values)
        assert_no_secrets("status event", (json.dumps(e, default=str) for e in run.output.status), secret_values)
        assert_no_secrets("dead letter", (repr(d) for d in run.output.dlq), secret_values)
        records = parsed(lines)
        assert_no_secrets("exception", (r["exception"] for r in records if "exception" in r), secret_values)

        # Each kind of secret really went through the worker (or this test proves nothing).
        assert run.sim.faults.injected.get("401") == 1 and run.tokens_requested == 2
        assert len(run.sim.issued) == 2
        assert sorted(f["request_id"] for f in run.output.files) == sorted([run.ids["links"], run.ids["crash"]])
        assert all("&sig=" in f["url"] for f in run.output.files)  # the one place a link belongs
        echo = run.output.events(run.ids["echo"])[-1]
        assert echo["status"] == "FAILED" and echo["error"]["code"] == "vendor_rejected"
        message = echo["error"]["message"]
        assert '\\"password\\": \\"***\\"' in message
        assert '"message": "request refused for Bearer ***"' in message
        assert '"headers": {"Authorization": "***"}' in message
        assert "client_secret=***" in message

    async def test_vendor_call_log_lines_carry_the_request_context(self, leaky_run: Run, json_logs: Lines) -> None:
        """request_id, vendor, connection and vendor_job_id are bound on the lines a
        vendor call logs, and the redacted details are there too."""
        run = leaky_run
        lines = json_logs()
        assert_no_secrets("log line", lines, run.secret_values())  # before any assertion shows a line
        records = parsed(lines)
        job_ids = {r: run.output.events(r)[-1]["vendor_job_id"] for r in run.ids.values()}
        assert all(job_ids.values())

        def lines_for(event: str, request_id: str) -> list[dict[str, Any]]:
            return [r for r in records if r.get("event") == event and r.get("request_id") == request_id]

        def context(record: dict[str, Any]) -> tuple[Any, ...]:
            return (record["request_id"], record["vendor"], record["connection"], record["vendor_job_id"])

        malformed = lines_for("vendor call failed", run.ids["links"])
        assert [(r["code"], r["operation"]) for r in malformed] == [("malformed_answer", "poll")]
        assert context(malformed[0]) == (run.ids["links"], "itron", "itron", job_ids[run.ids["links"]])
        assert "sig=***" in malformed[0]["error"]

        rejected = lines_for("vendor call failed", run.ids["echo"])
        assert [(r["code"], r["operation"]) for r in rejected] == [("vendor_rejected", "poll")]
        assert context(rejected[0]) == (run.ids["echo"], "itron", "itron", job_ids[run.ids["echo"]])

        crashed = lines_for("vendor adapter crashed", run.ids["crash"])
        assert len(crashed) == 1 and crashed[0]["level"] == "error"
        assert context(crashed[0]) == (run.ids["crash"], "itron", "itron", job_ids[run.ids["crash"]])
        exception = crashed[0]["exception"]
        assert exception.startswith("Traceback (most recent call last):")
        assert exception.splitlines()[-1] == (
            "RuntimeError: cannot rebuild the call from {'Authorization': '***'} "
            "and {'client_id': 'demo-client', 'client_secret': '***'}"
        )

        statuses = [r for r in records if r.get("event") == "status" and r.get("request_id") == run.ids["echo"]]
        assert statuses[-1]["status"] == "FAILED" and statuses[-1]["vendor_job_id"] == job_ids[run.ids["echo"]]

        # Tracing is on in this run: a call's lines name its span, in its job's trace.
        spans = {f"{s.context.span_id:016x}": s for s in run.spans.get_finished_spans()}
        for line in (malformed[0], rejected[0], crashed[0]):
            span = spans[line["span_id"]]
            assert f"{span.context.trace_id:032x}" == line["trace_id"]
            assert span.attributes is not None and span.attributes["export.request_id"] == line["request_id"]

    async def test_spans_hold_no_secret(self, leaky_run: Run) -> None:
        """Span names, attributes, events, links and statuses: no token, secret,
        signature or password, though the calls that carried them were traced."""
        run = leaky_run
        finished = run.spans.get_finished_spans()
        texts = [span.to_json() for span in finished]
        assert_no_secrets("span", texts, run.secret_values())
        names = {span.name for span in finished}
        assert {"export.ingest", "itron submit", "itron poll"} <= names
        requests = {
            (e.attributes["http.request.method"], e.attributes["url.template"])
            for span in finished
            for e in span.events
            if e.name == "http.request" and e.attributes is not None
        }
        assert {("POST", "/connect/token"), ("GET", "/dpss/api/v1/subscriptions/{id}/batch-request/{id}")} <= requests
        failed = [s for s in finished if s.name == "itron poll" and not s.status.is_ok]
        assert {s.attributes["error.type"] for s in failed if s.attributes} >= {"malformed_answer", "vendor_rejected"}


class TestStandardLibraryRecords:
    def test_an_exception_logged_through_logging_is_rendered_and_redacted(
        self, json_logs: Lines, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """aiohttp, asyncio and librdkafka log through ``logging``: their tracebacks go
        through the same redaction as ours."""
        root = logging.getLogger()
        # Only the project's handler: pytest's own log capture would keep the raw record.
        ours = [h for h in root.handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)]
        monkeypatch.setattr(root, "handlers", ours)
        token = secrets.token_urlsafe(24)
        password = f"pw-{secrets.token_hex(8)}"
        try:
            raise ConnectionError(f"refused: Authorization: Bearer {token} body={{'password': '{password}'}}")
        except ConnectionError:
            logging.getLogger("aiohttp.client").exception("request to %s failed", f"https://v.example/x?sig={token}")
        lines = json_logs()
        assert_no_secrets("log line", lines, {"token": [token], "password": [password]})
        [record] = [r for r in parsed(lines) if r.get("logger") == "aiohttp.client"]
        assert record["event"] == "request to https://v.example/x?sig=*** failed"
        assert record["level"] == "error"
        assert "exc_info" not in record
        assert record["exception"].startswith("Traceback (most recent call last):")
        assert record["exception"].endswith(
            "ConnectionError: refused: Authorization: Bearer *** body={'password': '***'}"
        )
