"""OpenTelemetry traces on real Kafka and a real vendor simulator: one trace per export,
continued by the worker that takes a job over (linked to its last owner's call), with
``traceparent`` on every status and file event, and sent over OTLP/HTTP."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from confluent_kafka import Producer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import itron_connection, running
from worker.codec import Codec
from worker.config import Settings
from worker.kafka import admin_client as make_admin
from worker.kafka import ensure_topics, producer_config
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import OtlpReceiver, OutputReader, eventually, itron_request, terminal
from worker.tracing import Tracing


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


async def publish_traced(settings: Settings, requests: dict[str, str]) -> None:
    """Publish itron requests {request id: traceparent}, each with its producer's context."""
    await ensure_topics(settings, make_admin(settings))
    codec = Codec()
    producer = Producer(producer_config(settings))
    for request_id, traceparent in requests.items():
        value = codec.encode("ExportRequested", itron_request(request_id), topic=settings.topics.requests)
        producer.produce(
            settings.topics.requests,
            value=value,
            key=request_id.encode(),
            headers=[("traceparent", traceparent.encode()), ("tracestate", b"vendor=acme")],
        )
    assert await asyncio.to_thread(producer.flush, 30) == 0


def hex_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def about(spans: list[ReadableSpan], trace_id: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if trace_of(s) == trace_id), key=lambda s: s.start_time or 0)


class TestOneTracePerExport:
    async def test_a_request_that_crosses_a_worker_crash_stays_one_trace(self, settings: Settings) -> None:
        sim = ItronSimulator(timing=Timing(stages=(1.0, 1.0, 1.0)), seed=5)
        await sim.start()
        producers = {f"tr-{i}": (secrets.token_hex(16), secrets.token_hex(8)) for i in range(3)}
        traceparents = {r: f"00-{t}-{s}-01" for r, (t, s) in producers.items()}
        ids = list(producers)
        first_tracing, first_spans = in_memory()
        second_tracing, second_spans = in_memory()
        try:
            conn = itron_connection(sim.base_url)
            first = Worker(settings, connections={"itron": conn}, tracing=first_tracing)
            async with OutputReader(settings) as reader:
                task = asyncio.create_task(first.run(asyncio.Event()))
                await publish_traced(settings, traceparents)
                await reader.wait_for(
                    lambda o: all("SUBMITTED" in o.statuses(r) for r in ids), timeout=60, what="all submitted"
                )
                task.cancel()  # a crash: nothing more is committed
                with pytest.raises(asyncio.CancelledError):
                    await task
                seen = await reader.read()
                assert not any(terminal(seen, [r]) for r in ids), "too late to prove a takeover"
                second = Worker(
                    settings.model_copy(update={"instance_id": "second"}),
                    connections={"itron": conn},
                    tracing=second_tracing,
                )
                async with running(second):
                    out = await reader.wait_for(lambda o: terminal(o, ids), timeout=90, what="all terminal")
        finally:
            await sim.stop()

        before, after = first_spans.get_finished_spans(), second_spans.get_finished_spans()
        for request_id, (trace_id, producer_span) in producers.items():
            mine_before, mine_after = about(list(before), trace_id), about(list(after), trace_id)
            ingest = [s for s in mine_before if s.name == "export.ingest"]
            assert len(ingest) == 1 and ingest[0].parent is not None
            assert f"{ingest[0].parent.span_id:016x}" == producer_span  # a child of the producer's span
            calls_before = [s for s in mine_before if s.name.startswith("itron ")]
            assert [s.name for s in calls_before][:1] == ["itron submit"]
            for call in calls_before:
                assert call.parent is not None and f"{call.parent.span_id:016x}" == producer_span
                assert call.attributes is not None and call.attributes["export.request_id"] == request_id
            submit = calls_before[0]
            assert submit.attributes is not None and submit.attributes["http.response.status_code"] == 200
            http = [e.attributes for e in submit.events if e.name == "http.request" and e.attributes is not None]
            assert [(a["http.request.method"], a["url.template"]) for a in http][-1] == (
                "POST",
                "/dpss/api/v1/subscriptions/{id}/batch-request",
            )

            # The new owner continues the same trace, its first call linked to one of the
            # crashed worker's calls of this job (the last one whose state was written).
            calls_after = [s for s in mine_after if s.name.startswith("itron ")]
            assert calls_after and calls_after[-1].attributes is not None
            assert calls_after[-1].attributes["export.status"] == "SUCCEEDED"
            links = [f"{link.context.span_id:016x}" for link in calls_after[0].links]
            assert links and links[0] in {hex_id(s) for s in calls_before}
            assert any(e.name == "waited" for s in calls_after for e in s.events)

            # Every status and file event of the job carries the traceparent of its
            # publish span, in the producer's trace.
            publishes = {hex_id(s): s for s in [*mine_before, *mine_after] if s.name == "export.publish"}
            events = [*out.events(request_id), *out.files_for(request_id)]
            assert len(events) >= 4
            for event in events:
                header = event["_headers"]["traceparent"].decode()
                _, event_trace, span_id, _ = header.split("-")
                assert event_trace == trace_id and span_id in publishes, (
                    request_id,
                    event.get("status", "file"),
                )
                published = publishes[span_id]
                assert published.parent is not None and f"{published.parent.span_id:016x}" == producer_span
            said = [w for s in publishes.values() if s.attributes for w in s.attributes["export.published"]]
            assert {"ACCEPTED", "SUBMITTED", "SUCCEEDED", "FileReady"} <= set(said)
            state = out.jobs[request_id]
            assert state is not None and state["trace"]["traceparent"] == traceparents[request_id]
            assert state["trace"]["tracestate"] == "vendor=acme"

    async def test_a_request_without_trace_context_starts_its_own_trace(self, settings: Settings) -> None:
        sim = ItronSimulator(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=6)
        await sim.start()
        tracing, spans = in_memory()
        try:
            worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)}, tracing=tracing)
            async with running(worker), OutputReader(settings) as reader:
                await publish_traced(settings, {"own-1": "not-a-traceparent"})
                out = await reader.wait_for(lambda o: terminal(o, ["own-1"]), timeout=60, what="terminal")
        finally:
            await sim.stop()
        ingest = [s for s in spans.get_finished_spans() if s.name == "export.ingest"]
        assert len(ingest) == 1 and ingest[0].parent is None  # the root of a new trace
        trace_id = trace_of(ingest[0])
        assert all(e["_headers"]["traceparent"].decode().split("-")[1] == trace_id for e in out.events("own-1"))
        assert len(about(list(spans.get_finished_spans()), trace_id)) >= 6

    async def test_a_request_whose_producer_did_not_sample_gets_no_spans(self, settings: Settings) -> None:
        """Under the default parent-based sampler a producer's unsampled context gets no
        span anywhere, and its events pass that context on; a sampled one beside it is
        traced as before."""
        sim = ItronSimulator(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=8)
        await sim.start()
        tracing, spans = in_memory()
        unsampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        sampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        try:
            worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)}, tracing=tracing)
            async with running(worker), OutputReader(settings) as reader:
                await publish_traced(settings, {"unsampled-1": unsampled, "sampled-1": sampled})
                out = await reader.wait_for(
                    lambda o: terminal(o, ["unsampled-1", "sampled-1"]), timeout=60, what="terminal"
                )
        finally:
            await sim.stop()
        finished = list(spans.get_finished_spans())
        assert about(finished, unsampled.split("-")[1]) == []
        assert {"export.ingest", "itron submit", "itron poll", "export.publish"} <= {
            s.name for s in about(finished, sampled.split("-")[1])
        }
        events = out.events("unsampled-1") + out.files_for("unsampled-1")
        assert "SUCCEEDED" in out.statuses("unsampled-1") and out.files_for("unsampled-1")
        assert all(e["_headers"]["traceparent"].decode() == unsampled for e in events)
        state = out.jobs["unsampled-1"]
        assert state is not None and state["trace"]["traceparent"] == unsampled


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as r:
        yield r


class TestOtlpExport:
    async def test_spans_reach_an_otlp_http_receiver(
        self, settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "otlp"}, instance_id="otlp-test")
        assert tracing.enabled
        sim = ItronSimulator(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=7)
        await sim.start()
        trace_id = secrets.token_hex(16)
        try:
            worker = Worker(settings, connections={"itron": itron_connection(sim.base_url)}, tracing=tracing)
            async with running(worker), OutputReader(settings) as reader:
                await publish_traced(settings, {"otlp-1": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
                await reader.wait_for(lambda o: terminal(o, ["otlp-1"]), timeout=60, what="terminal")
                await eventually(
                    lambda: (
                        {"export.ingest", "itron submit", "itron poll", "export.publish"}
                        <= {s["name"] for s in receiver.spans if s["trace_id"] == trace_id}
                    ),
                    timeout=30,
                    what="the trace's spans received",
                )
        finally:
            tracing.shutdown()
            await sim.stop()
        names = {s["name"] for s in receiver.spans if s["trace_id"] == trace_id}
        assert {"export.ingest", "itron submit", "itron poll"} <= names
        assert {"service.name": "export-worker", "service.instance.id": "otlp-test"}.items() <= receiver.resources[
            0
        ].items()

    def test_tracing_is_off_unless_an_exporter_is_named(self) -> None:
        assert not Tracing.from_env({}).enabled
        assert not Tracing.from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled
        assert not Tracing.from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}).enabled
        console = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
        assert console.enabled
        console.shutdown()
