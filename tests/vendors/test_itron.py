"""Outside values that reach Itron URLs: request fields refused at ingest, and every path
segment escaped in the adapter (against the real simulator, over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import itron_connection
from worker.codec import Codec
from worker.errors import InvalidRequest, MalformedAnswer, VendorRejected
from worker.ingest import Ingest, Rejection, jsonable
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator, sample_job
from worker.testing import itron_request
from worker.vendors import HttpClient, build_adapter
from worker.vendors.base import JobSpec
from worker.vendors.itron import ItronAdapter, validate

CODEC = Codec()
SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"
OTHER_SUBSCRIPTION = "0b0b0b0b-1c1c-4d4d-8e8e-2f2f2f2f2f2f"
HOSTILE_SUBSCRIPTIONS = [
    "x/../../../../../connect/token#",  # the review's case: token and DataSubscriberId sent to /connect/token
    "../" + OTHER_SUBSCRIPTION,
    f"{SUBSCRIPTION}/batch-request/x?",
    f"urn:uuid:{SUBSCRIPTION}",
    f"{{{SUBSCRIPTION}}}",
    SUBSCRIPTION.replace("-", ""),
    f"{SUBSCRIPTION}\n",
    "..",
    "",
]


def job(subscription_id: str | None = None) -> dict[str, Any]:
    _, fields = sample_job()
    return jsonable(("export.v1.ItronBatchRequest", {**fields, "subscription_id": subscription_id}))


def spec(request_id: str, subscription_id: str | None = None) -> JobSpec:
    return JobSpec(request_id, "acme", "itron", job(subscription_id))


@pytest.fixture
async def itron() -> AsyncIterator[ItronSimulator]:
    sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=3)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def adapter(itron: ItronSimulator, session: HttpClient) -> ItronAdapter:
    built = build_adapter("itron", itron_connection(itron.base_url), session)
    assert isinstance(built, ItronAdapter)
    return built


class TestSubscriptionIdAtIngest:
    """The seed's parameter table: Subscriptionid is a UUID in the path."""

    @pytest.mark.parametrize("value", HOSTILE_SUBSCRIPTIONS)
    def test_a_subscription_id_that_is_not_a_uuid_is_refused(self, value: str) -> None:
        with pytest.raises(InvalidRequest, match=r"subscription_id .* is not a UUID"):
            validate(job(value), 0, itron_connection("http://127.0.0.1:9"))

    @pytest.mark.parametrize("value", [OTHER_SUBSCRIPTION, OTHER_SUBSCRIPTION.upper(), None])
    def test_a_uuid_or_none_is_accepted(self, value: str | None) -> None:
        validate(job(value), int(dt.datetime.now(dt.UTC).timestamp() * 1000), itron_connection("http://127.0.0.1:9"))

    async def test_ingest_rejects_it_with_a_dead_letter_and_a_rejected_event(self) -> None:
        """A REJECTED status for the producer, and a dead letter naming the field."""
        record = itron_request("hostile")
        kind, fields = record["job"]
        record["job"] = (kind, {**fields, "subscription_id": HOSTILE_SUBSCRIPTIONS[0]})
        ingest = Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:9")}, max_bytes=262_144)
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)

        out = await ingest.read(b"hostile", CODEC.encode("ExportRequested", record), partition=0, offset=7, now_ms=now)

        assert isinstance(out, Rejection) and out.reason_code == "invalid_request"
        assert "subscription_id" in out.reason and "is not a UUID" in out.reason
        assert out.event is not None and out.event.request_id == "hostile"


class TestPathsAreEscaped:
    async def test_a_hostile_subscription_id_stays_one_path_segment(
        self, adapter: ItronAdapter, itron: ItronSimulator
    ) -> None:
        """Past ingest (say, an old request already in state): the token never reaches another path."""
        with pytest.raises(VendorRejected) as caught:
            await adapter.submit(spec("req-hostile", HOSTILE_SUBSCRIPTIONS[0]))

        assert caught.value.status == 404
        assert not itron.jobs
        calls = [r for r in itron.requests if "Authorization" in r["headers"]]
        assert [r["path"] for r in calls] == [
            "/dpss/api/v1/subscriptions/x/../../../../../connect/token#/batch-request"
        ]

    async def test_a_hostile_vendor_job_id_is_polled_at_its_escaped_path(
        self, adapter: ItronAdapter, itron: ItronSimulator
    ) -> None:
        """A job id like ``../x`` from a vendor answer cannot reach another subscription's job."""
        elsewhere = await adapter.submit(spec("req-elsewhere", OTHER_SUBSCRIPTION))
        hostile = f"../../{OTHER_SUBSCRIPTION}/batch-request/{elsewhere.vendor_job_id}"

        with pytest.raises(VendorRejected) as caught:
            await adapter.poll(spec("req-mine"), hostile)

        assert caught.value.status == 404
        (poll,) = [r for r in itron.requests if r["method"] == "GET"]
        assert poll["path"] == f"/dpss/api/v1/subscriptions/{SUBSCRIPTION}/batch-request/{hostile}"

    @pytest.mark.parametrize("job_id", ["..", ".", ""])
    async def test_a_dot_segment_job_id_is_never_sent(
        self, adapter: ItronAdapter, itron: ItronSimulator, job_id: str
    ) -> None:
        """``..`` resolves even escaped (``%2E%2E``): refused before any call."""
        with pytest.raises(VendorRejected, match="cannot be used as a URL path segment"):
            await adapter.poll(spec("req-dots"), job_id)
        assert not [r for r in itron.requests if r["method"] == "GET"]

    @pytest.mark.parametrize("job_id", ["..", " ", "a\r\nb", 7])
    async def test_a_submit_answer_with_an_unusable_job_id_is_malformed_and_may_have_acted(
        self, adapter: ItronAdapter, itron: ItronSimulator, job_id: object
    ) -> None:
        itron.answer_next(200, f'{{"jobId": {json.dumps(job_id)}, "status": "New"}}')
        with pytest.raises(MalformedAnswer) as caught:
            await adapter.submit(spec("req-bad-id"))
        assert caught.value.outcome_unknown is True

    async def test_an_ordinary_job_is_still_submitted_and_polled(self, adapter: ItronAdapter) -> None:
        submitted = await adapter.submit(spec("req-ok"))
        uuid.UUID(submitted.vendor_job_id)
        polled = await adapter.poll(spec("req-ok"), submitted.vendor_job_id)
        assert polled.vendor_status in ("New", "Started", "Running", "Success", "Failed")
