"""Trace context as the outside world sends it (bounded, validated), span names that
never hold an id or a secret, and the JobState version written with and without it."""

from __future__ import annotations

import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.runtime_fakes import accepted
from worker.codec import Codec, schemas_dir
from worker.engine.model import TraceContext
from worker.limits import MAX_TRACESTATE_BYTES
from worker.records import decode_state_now, state_to_record
from worker.tracing import (
    Tracing,
    context_from_headers,
    current_ids,
    drops_unsampled_parents,
    path_template,
    trace_headers,
)

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class TestHeaders:
    def test_a_valid_context_is_read_with_its_state(self) -> None:
        headers = [("other", b"x"), ("TraceParent", PARENT.encode()), ("tracestate", b"vendor=acme")]
        assert context_from_headers(headers) == (PARENT, "vendor=acme")

    @pytest.mark.parametrize(
        "value",
        [
            b"",
            b"garbage",
            PARENT.upper().encode(),  # ids are lower-case hex
            PARENT.replace("00-", "01-", 1).encode(),  # another version: not read
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
            (PARENT + "-extra").encode(),
            PARENT.encode() * 1000,
            b"\xff" * 55,
        ],
    )
    def test_anything_else_starts_a_new_trace(self, value: bytes) -> None:
        assert context_from_headers([("traceparent", value)]) is None

    def test_only_the_first_traceparent_counts_and_a_huge_tracestate_is_dropped(self) -> None:
        other = "00-" + "1" * 32 + "-" + "2" * 16 + "-00"
        headers = [("traceparent", PARENT.encode()), ("traceparent", other.encode())]
        headers.append(("tracestate", b"k=" + b"v" * MAX_TRACESTATE_BYTES))
        assert context_from_headers(headers) == (PARENT, None)
        assert context_from_headers(None) is None and context_from_headers([("traceparent", None)]) is None

    @pytest.mark.parametrize(
        ("value", "kept"),
        [
            (b"vendor=acme", "vendor=acme"),
            (b"a=1, tenant@sys=x y ,b=2", "a=1,tenant@sys=x y,b=2"),
            (b"k=x=y", None),  # "=" is not a value character
            (b"Upper=1", None),  # keys are lower case
            (b"novalue", None),
            (b"k=caf\xc3\xa9", None),  # not ASCII
            (b"k=\xff", None),
            (b",".join(b"k%d=v" % i for i in range(33)), None),  # at most 32 members
        ],
    )
    def test_a_tracestate_is_kept_only_if_it_is_one(self, value: bytes, kept: str | None) -> None:
        assert context_from_headers([("traceparent", PARENT.encode()), ("tracestate", value)]) == (PARENT, kept)

    def test_a_forwarded_request_keeps_only_a_valid_trace_context(self) -> None:
        headers = [("x-other", b"1"), ("traceparent", PARENT.encode()), ("tracestate", b"k=v")]
        assert trace_headers(headers) == [("traceparent", PARENT.encode()), ("tracestate", b"k=v")]
        assert trace_headers([("traceparent", PARENT.encode())]) == [("traceparent", PARENT.encode())]
        assert trace_headers([("traceparent", b"junk"), ("tracestate", b"k=v")]) is None

    @given(st.lists(st.tuples(st.text(max_size=20), st.one_of(st.none(), st.binary(max_size=200))), max_size=20))
    def test_hostile_headers_never_raise_and_give_a_valid_context_or_none(
        self, headers: list[tuple[str, bytes | None]]
    ) -> None:
        found = context_from_headers(headers)
        if found is not None:
            assert len(found[0]) == 55 and (found[1] is None or len(found[1]) <= MAX_TRACESTATE_BYTES)


class TestPathTemplate:
    @pytest.mark.parametrize(
        ("path", "template"),
        [
            (
                "/dpss/api/v1/subscriptions/7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10/batch-request/42?sig=abc",
                "/dpss/api/v1/subscriptions/{id}/batch-request/{id}",
            ),
            ("/connect/token", "/connect/token"),
            ("https://vendor.example/v2/export/job/status?jobCode=J-99", "/v2/export/job/status"),
            ("/files/report%2Fsecret.csv#frag", "/files/{id}"),
            ("/a/b=c/d", "/a/{id}/d"),
        ],
    )
    def test_ids_queries_and_signatures_are_left_out(self, path: str, template: str) -> None:
        assert path_template(path) == template


class TestTheWrittenJobStateVersion:
    def test_without_tracing_states_are_written_as_the_previous_release_reads_them(self) -> None:
        codec = Codec()
        previous = codec.schemas.previous["JobState"]
        state = accepted("r1", 1_700_000_000_000).evolve(trace=TraceContext(PARENT, "k=v", "00f067aa0ba902b7", 5))
        old = codec.encode("JobState", state_to_record(state), writer=previous)
        assert old[2:10] == previous.fingerprint
        # An older worker (it knows only the previous schema) reads it...
        old_schema = json.loads((schemas_dir() / "history" / "JobState.1.avsc").read_text())
        body = fastavro.schemaless_reader(_body(old), fastavro.parse_schema(old_schema), None)
        assert body["request_id"] == "r1" and "trace" not in body
        # ...and this one reads it back without the trace context.
        assert decode_state_now(codec, old).trace is None

    def test_with_tracing_the_trace_context_round_trips(self) -> None:
        codec = Codec()
        trace = TraceContext(PARENT, "k=v", "00f067aa0ba902b7", 1_700_000_000_123)
        state = accepted("r1", 1_700_000_000_000).evolve(trace=trace)
        new = codec.encode("JobState", state_to_record(state))
        assert new[2:10] == codec.schemas.by_name["JobState"].fingerprint
        restored = decode_state_now(codec, new)
        assert restored.trace == trace and restored.trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def _body(value: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(value[10:])


class TestSampledOutJobs:
    """Under a parent-based sampler a job whose context is not sampled gets no spans."""

    @pytest.mark.parametrize(
        ("sampler", "drops"),
        [
            (sampling.DEFAULT_ON, True),  # the SDK's default: parentbased_always_on
            (sampling.ParentBased(sampling.TraceIdRatioBased(0.5)), True),
            (sampling.DEFAULT_OFF, True),
            (sampling.ALWAYS_OFF, True),
            (sampling.ALWAYS_ON, False),
            (sampling.TraceIdRatioBased(0.5), False),
            (sampling.ParentBased(sampling.ALWAYS_ON, remote_parent_not_sampled=sampling.ALWAYS_ON), False),
        ],
    )
    def test_only_a_sampler_that_drops_unsampled_parents_is_trusted(
        self, sampler: sampling.Sampler, drops: bool
    ) -> None:
        assert drops_unsampled_parents(sampler) is drops

    def test_a_job_is_recorded_unless_its_context_is_unsampled_and_the_sampler_follows_parents(self) -> None:
        sampled = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        unsampled = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        parent_based = Tracing(TracerProvider())
        assert parent_based.records(sampled) and not parent_based.records(unsampled)
        always = Tracing(TracerProvider(sampler=sampling.ALWAYS_ON))
        assert always.records(sampled) and always.records(unsampled)

    def test_an_unsampled_producer_context_makes_no_ingest_span(self) -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        with Tracing(provider).ingest([("traceparent", traceparent.encode())], {}) as (span, job):
            assert not span.is_recording()
            # the producer's own context is current (log lines), no span of the worker's
            assert current_ids() == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
        assert job == TraceContext(traceparent, None) and current_ids() is None
        with Tracing(provider).ingest([("traceparent", traceparent[:-2].encode() + b"01")], {}) as (span, job):
            assert span.is_recording()
        assert [s.name for s in exporter.get_finished_spans()] == ["export.ingest"]
