"""Bounds on what requests and vendor answers control: a job's state record can only
grow by a known amount after ingest, and ingest refuses a request whose state could not
be written (checked against the encoded state, not the input)."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import itron_connection
from worker.codec import Codec
from worker.engine.machine import Context, step
from worker.engine.model import (
    CallFailed,
    CallKind,
    ErrorInfo,
    FileInfo,
    Phase,
    PollAnswered,
    PublishStatus,
    RequestInfo,
    RequestReceived,
    Status,
    SubmitAnswered,
)
from worker.engine.policy import Policy
from worker.ingest import Ingest, Rejection
from worker.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_FILE_URL_BYTES,
    MAX_REJECTED_TEXT_BYTES,
    MAX_VENDOR_JOB_ID_BYTES,
    MAX_VENDOR_STATUS_BYTES,
    VENDOR_FIELDS_BOUND,
    clip,
)
from worker.records import state_size_bound, state_to_record, status_record
from worker.runtime.calls import bounded
from worker.runtime.intake import bounded_headers
from worker.testing import itron_request

CODEC = Codec()
NOW_MS = 1_700_000_000_000
texts = st.text(st.characters(codec="utf-8"), max_size=300)


def at_most(limit: int) -> st.SearchStrategy[str]:
    """Texts of any characters already within ``limit`` bytes (as the call boundary leaves them)."""
    return st.text(st.characters(codec="utf-8"), max_size=limit).map(lambda t: clip(t, limit))


class TestClip:
    @given(text=texts, limit=st.integers(0, 400))
    def test_clipped_text_fits_and_is_a_prefix_of_whole_characters(self, text: str, limit: int) -> None:
        out = clip(text, limit)
        assert len(out.encode()) <= limit and text.startswith(out)


class TestStateSizeBound:
    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(
        request_id=at_most(256),
        tenant=texts,
        job=texts,
        labels=st.dictionaries(texts, texts, max_size=5),
        correlation=st.none() | texts,
        vendor_status=at_most(MAX_VENDOR_STATUS_BYTES),
        job_id=at_most(MAX_VENDOR_JOB_ID_BYTES),
        url=at_most(MAX_FILE_URL_BYTES),
        message=at_most(MAX_ERROR_MESSAGE_BYTES),
        big=st.integers(0, 2**62),
    )
    def test_no_state_a_request_can_reach_is_larger_than_its_bound(
        self,
        request_id: str,
        tenant: str,
        job: str,
        labels: dict[str, str],
        correlation: str | None,
        vendor_status: str,
        job_id: str,
        url: str,
        message: str,
        big: int,
    ) -> None:
        request = RequestInfo(request_id, tenant, "itron", "itron", job, big, 5, big, correlation, labels, correlation)
        start = step(None, RequestReceived(request), Context(NOW_MS, 0.5, Policy())).state
        assert start is not None
        grown = start.evolve(
            phase=Phase.DONE,
            status=Status.SUCCEEDED,
            vendor_status=vendor_status,
            vendor_job_id=job_id,
            file=FileInfo(url, clip("x" * 100, 64), big, big, "f" * 128),
            error=ErrorInfo(clip("c" * 100, 64), message, True),
            sequence=big,
            submit_attempt=big,
            next_action_at_ms=big,
            poll_attempt=big,
            failing_since_ms=big,
            finished_at_ms=big,
            updated_at_ms=big,
        )
        for state in (start, grown):
            encoded = CODEC.encode("JobState", state_to_record(state))
            assert len(encoded) <= state_size_bound(request) + VENDOR_FIELDS_BOUND


class TestIngestChecksTheStateRecord:
    async def test_a_request_whose_state_would_be_too_large_is_rejected_at_the_door(self) -> None:
        """The case seen in the field: ~200 KB of control characters passes the request
        limit, but JSON-escaped its state record is ~1.2 MB, past the broker's limit."""
        today = dt.datetime.now(dt.UTC).date()
        tokens = {
            "StartEventDate": (today - dt.timedelta(days=30)).isoformat(),
            "EndEventDate": today.isoformat(),
            "ServicePoint": "9000053409",
            "Note": "\x01" * 200_000,
        }
        value = CODEC.encode("ExportRequested", itron_request("big", tokens=tokens))
        ingest = Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:9")}, max_bytes=262_144)
        assert len(value) < ingest.max_bytes
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        out = await ingest.read(b"big", value, partition=0, offset=0, now_ms=now)
        assert isinstance(out, Rejection) and out.reason_code == "state_too_large"
        assert out.event is not None and out.event.request_id == "big"  # the producer hears REJECTED
        assert str(DEFAULT_MAX_RECORD_BYTES) in out.reason

    async def test_the_rejection_of_any_request_fits_in_a_record(self) -> None:
        """Rejected for an unknown connection, a request whose tenant and connection are
        ~120 KB of control characters each: its REJECTED state and status carry them
        clipped (the dead letter keeps the request as it came)."""
        filler = "\x01" * 120_000
        record = {**itron_request("rej"), "tenant": filler, "connection": filler, "correlation_id": filler}
        value = CODEC.encode("ExportRequested", record)
        ingest = Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:9")}, max_bytes=900_000)
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        out = await ingest.read(b"rej", value, partition=0, offset=0, now_ms=now)
        assert isinstance(out, Rejection) and out.reason_code == "unknown_connection" and out.event is not None
        moved = step(None, out.event, Context(now, 0.5, Policy()))
        assert moved.state is not None and moved.state.status is Status.REJECTED
        published = [e for e in moved.effects if isinstance(e, PublishStatus)]
        assert published
        sizes = [len(CODEC.encode("JobState", state_to_record(moved.state)))]
        sizes += [len(CODEC.encode("JobStatusChanged", status_record(moved.state, e))) for e in published]
        assert max(sizes) <= 4 * MAX_REJECTED_TEXT_BYTES + MAX_ERROR_MESSAGE_BYTES + 1_024, sizes
        assert moved.state.tenant == clip(filler, MAX_REJECTED_TEXT_BYTES)

    async def test_an_ordinary_request_fits(self) -> None:
        value = CODEC.encode("ExportRequested", itron_request("small"))
        ingest = Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:9")}, max_bytes=262_144)
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        assert isinstance(await ingest.read(b"small", value, partition=0, offset=0, now_ms=now), RequestInfo)


class TestVendorAnswersAreBounded:
    def test_a_long_status_name_and_error_text_are_clipped(self) -> None:
        answer = PollAnswered("S" * 10_000, Status.FAILED, error=ErrorInfo("e", "é" * 10_000, False))
        out = bounded(CallKind.POLL, answer)
        assert isinstance(out, PollAnswered)
        assert len((out.vendor_status or "").encode()) <= MAX_VENDOR_STATUS_BYTES
        assert out.error is not None and len(out.error.message.encode()) <= MAX_ERROR_MESSAGE_BYTES

    def test_a_job_id_too_long_to_keep_is_a_malformed_answer_whose_submit_may_have_acted(self) -> None:
        out = bounded(CallKind.SUBMIT, SubmitAnswered("j" * 10_000, "Queued", Status.QUEUED))
        assert isinstance(out, CallFailed) and out.error.code == "malformed_answer"
        assert out.error.retryable and out.outcome_unknown

    def test_a_link_too_long_to_keep_is_a_malformed_answer(self) -> None:
        answer = PollAnswered("Done", Status.SUCCEEDED, file=FileInfo("https://x/" + "a" * 20_000, "csv"))
        out = bounded(CallKind.POLL, answer)
        assert isinstance(out, CallFailed) and not out.outcome_unknown

    def test_an_ordinary_answer_is_left_as_it_is(self) -> None:
        answer = PollAnswered("Done", Status.SUCCEEDED, file=FileInfo("https://x/f.csv", "csv", sha256="ab" * 32))
        assert bounded(CallKind.POLL, answer) is answer


class TestDeadLetterHeaders:
    def test_only_the_headers_that_fit_are_kept(self) -> None:
        many = [(f"h{i}", b"v" * 10) for i in range(1_000)]
        assert len(bounded_headers(many)) == 64
        huge = [("a", b"x" * 40_000), ("b", b"y" * 40_000), ("c", b"z")]
        assert [name for name, _ in bounded_headers(huge)] == ["a"]
        assert bounded_headers(None) == []
