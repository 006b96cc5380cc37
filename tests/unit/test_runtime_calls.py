"""Running one vendor call, and how each way it can fail becomes an engine event."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.runtime_fakes import FakeAdapter, accepted, call_for, connection
from worker.engine.model import CallFailed, CallKind, Event, PollAnswered, Status, TraceContext
from worker.errors import (
    AuthFailed,
    ConfigError,
    MalformedAnswer,
    RateLimited,
    ResultStoreError,
    VendorBusy,
    VendorRejected,
    VendorUnavailable,
)
from worker.runtime.calls import DEFAULT_RATE_LIMIT_WAIT_S, Call, connection_wait_s, failure_event, run_call
from worker.testing import eventually
from worker.tracing import Tracing, current_ids

NOW_MS = 1_700_000_000_000


class TestFailureEvent:
    @pytest.mark.parametrize(
        ("exc", "code", "retryable"),
        [
            (VendorUnavailable("502 from the vendor"), "vendor_unavailable", True),
            (RateLimited("429", retry_after=12.0), "rate_limited", True),
            (AuthFailed("credentials refused"), "auth_failed", True),
            (VendorBusy("a billing run is in progress"), "vendor_busy", True),
            (VendorRejected("400 invalid date range"), "vendor_rejected", False),
            (MalformedAnswer("HTML instead of JSON"), "malformed_answer", True),
            (ResultStoreError("disk full"), "result_store_error", True),
            (ConfigError("no such bucket"), "worker_error", False),
            (KeyError("status"), "adapter_error", True),
        ],
    )
    def test_each_failure_keeps_its_code_and_whether_a_retry_can_help(
        self, exc: Exception, code: str, retryable: bool
    ) -> None:
        event = failure_event(CallKind.POLL, exc)
        assert (event.kind, event.error.code, event.error.retryable) == (CallKind.POLL, code, retryable)

    def test_a_vendor_error_carries_its_retry_after_and_whether_the_vendor_may_have_acted(self) -> None:
        event = failure_event(CallKind.SUBMIT, VendorUnavailable("timed out", retry_after=7.5, outcome_unknown=True))
        assert event.retry_after_s == 7.5 and event.outcome_unknown and not event.busy

    def test_a_refused_submit_is_known_not_to_have_created_a_job(self) -> None:
        assert not failure_event(CallKind.SUBMIT, RateLimited("429")).outcome_unknown

    def test_a_busy_vendor_is_marked_busy_so_the_job_waits_without_failing(self) -> None:
        assert failure_event(CallKind.SUBMIT, VendorBusy("busy")).busy

    @pytest.mark.parametrize("exc", [ResultStoreError("disk full"), RuntimeError("adapter bug")])
    def test_an_unexpected_failure_during_a_submit_leaves_its_outcome_unknown(self, exc: Exception) -> None:
        assert failure_event(CallKind.SUBMIT, exc).outcome_unknown
        assert not failure_event(CallKind.POLL, exc).outcome_unknown

    def test_secrets_in_the_failure_text_are_redacted(self) -> None:
        event = failure_event(
            CallKind.POLL, VendorRejected("refused: Authorization: Bearer abcdef123456 client_secret=s3cr3t")
        )
        assert "abcdef123456" not in event.error.message and "s3cr3t" not in event.error.message
        crash = failure_event(CallKind.POLL, RuntimeError("token=hunter2hunter2"))
        assert "hunter2" not in crash.error.message and crash.error.message.startswith("RuntimeError")


class TestConnectionWait:
    def test_a_429_blocks_the_connection_for_its_retry_after(self) -> None:
        assert connection_wait_s(failure_event(CallKind.POLL, RateLimited("429", retry_after=30.0))) == 30.0

    def test_a_429_without_retry_after_blocks_it_briefly(self) -> None:
        assert connection_wait_s(failure_event(CallKind.POLL, RateLimited("429"))) == DEFAULT_RATE_LIMIT_WAIT_S

    def test_a_503_with_retry_after_blocks_the_connection_for_it(self) -> None:
        assert connection_wait_s(failure_event(CallKind.POLL, VendorUnavailable("503", retry_after=9.0))) == 9.0

    def test_a_retry_after_is_cut_to_the_maximum(self) -> None:
        assert connection_wait_s(failure_event(CallKind.POLL, VendorUnavailable("503", retry_after=900.0)), 60) == 60

    def test_other_answers_do_not_block_the_connection(self) -> None:
        assert connection_wait_s(failure_event(CallKind.POLL, VendorUnavailable("503"))) is None
        assert connection_wait_s(failure_event(CallKind.POLL, VendorUnavailable("503", retry_after=0.0))) is None
        assert connection_wait_s(PollAnswered("Processing", Status.RUNNING)) is None


class TestRunCall:
    async def test_an_answer_becomes_the_event_with_one_shared_copy_of_the_vendor_status(self) -> None:
        adapter = FakeAdapter()
        raw = "".join(["Proc", "essing"])  # a fresh string, as decoded JSON would be
        adapter.answers[CallKind.POLL] = PollAnswered(raw, Status.RUNNING)
        conn = connection(adapter=adapter)
        state = accepted("r1", NOW_MS).evolve(vendor_job_id="job-1")
        event = await run_call(call_for(state, conn, CallKind.POLL))
        assert isinstance(event, PollAnswered) and event.status is Status.RUNNING
        assert event.vendor_status is not raw and event.vendor_status == raw
        assert adapter.calls == [(CallKind.POLL, "r1")]

    async def test_an_adapter_that_raises_gives_a_failed_call_not_an_exception(self) -> None:
        adapter = FakeAdapter()
        adapter.answers[CallKind.SUBMIT] = ZeroDivisionError("bug")
        event = await run_call(call_for(accepted("r1", NOW_MS), connection(adapter=adapter), CallKind.SUBMIT))
        assert isinstance(event, CallFailed)
        assert (event.error.code, event.outcome_unknown) == ("adapter_error", True)

    async def test_cancel_on_a_vendor_without_a_cancel_call_fails_clearly(self) -> None:
        state = accepted("r1", NOW_MS).evolve(vendor_job_id="job-1")
        event = await run_call(call_for(state, connection(), CallKind.CANCEL))
        assert isinstance(event, CallFailed) and "has no cancel call" in event.error.message

    async def test_a_cancelled_call_stays_cancelled(self) -> None:
        adapter = FakeAdapter()
        adapter.gate = asyncio.Event()
        task = asyncio.create_task(
            run_call(call_for(accepted("r1", NOW_MS), connection(adapter=adapter), CallKind.SUBMIT))
        )
        await eventually(lambda: adapter.calls, timeout=5, what="call started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class IdsSeenAdapter(FakeAdapter):
    """Notes the trace and span ids current while it is polled (what log lines carry)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[tuple[str, str] | None] = []

    async def poll(self, spec: Any, vendor_job_id: str) -> Any:
        self.ids.append(current_ids())
        return await super().poll(spec, vendor_job_id)


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class TestTracedCalls:
    def run(self, traceparent: str) -> tuple[Call, IdsSeenAdapter, InMemorySpanExporter, Event]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()  # the default sampler: parent-based
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        adapter = IdsSeenAdapter()
        state = replace(accepted("r1", NOW_MS), vendor_job_id="job-1", trace=TraceContext(traceparent))
        call = call_for(state, connection(adapter=adapter), CallKind.POLL)
        event = asyncio.run(run_call(call, Tracing(provider)))
        return call, adapter, exporter, event

    def test_a_sampled_job_gets_a_call_span_current_while_the_vendor_is_asked(self) -> None:
        call, adapter, exporter, event = self.run(f"00-{TRACE_ID}-{PARENT_ID}-01")
        assert isinstance(event, PollAnswered)
        [span] = exporter.get_finished_spans()
        assert span.name == "itron poll" and call.span_id == f"{span.context.span_id:016x}"
        assert adapter.ids == [(TRACE_ID, call.span_id)]

    def test_a_job_the_sampler_drops_gets_no_span_but_its_context_is_current(self) -> None:
        call, adapter, exporter, event = self.run(f"00-{TRACE_ID}-{PARENT_ID}-00")
        assert isinstance(event, PollAnswered)
        assert exporter.get_finished_spans() == () and call.span_id is None
        assert adapter.ids == [(TRACE_ID, PARENT_ID)]  # the job's own context, no new span

    def test_a_trace_context_that_does_not_parse_leaves_the_call_untraced(self) -> None:
        call, adapter, exporter, event = self.run(f"00-{TRACE_ID}-{PARENT_ID}-zz")
        assert isinstance(event, PollAnswered) and adapter.ids == [None]
        assert exporter.get_finished_spans() == () and call.span_id is None
