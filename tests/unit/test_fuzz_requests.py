"""Fuzzed, schema-valid requests on the real connections: ingest never raises (a request
is read, or rejected with a reason), and an accepted request's first engine step never
raises and gives a state record the broker takes. Requests come from
``worker.testing.fuzzed_request``, the generator an end-to-end run publishes with."""

from __future__ import annotations

import asyncio
import importlib
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import itron_connection
from worker.codec import Codec
from worker.config import ConnectionConfig, policy_for
from worker.engine.machine import Context, step
from worker.engine.model import RequestInfo, RequestReceived, Status
from worker.engine.policy import Policy
from worker.ingest import Ingest, Rejection
from worker.records import state_to_record
from worker.simulators import elasticpath, opengate, unicommerce
from worker.testing import FuzzedRequest, fuzzed_request, fuzzed_requests, itron_request

CODEC = Codec()
MAX_BYTES = 262_144  # the worker's default max_request_bytes
# librdkafka's default message.max.bytes: a larger state record fails its transaction.
RECORD_LIMIT = 1_000_000
CONNECTIONS: dict[str, ConnectionConfig] = {
    "itron": itron_connection("http://127.0.0.1:1"),
    "opengate": opengate.demo_connection("http://127.0.0.1:1"),
    "elasticpath": elasticpath.demo_connection("http://127.0.0.1:1"),
    "unicommerce": unicommerce.demo_connection("http://127.0.0.1:1"),
}
INGEST = Ingest(CODEC, CONNECTIONS, max_bytes=MAX_BYTES)


class HypothesisDraw:
    """``worker.testing.Draw`` from hypothesis, so a failing request is shrunk."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def text(self, max_size: int) -> str:
        return self.data.draw(st.text(max_size=max_size))


def check(request: FuzzedRequest, now_ms: int) -> RequestInfo | Rejection:
    """Ingest it; run the first engine step of what is accepted; check what must hold."""
    value = CODEC.encode("ExportRequested", request.record)
    outcome = asyncio.run(INGEST.read(request.key, value, partition=1, offset=7, now_ms=now_ms))
    if isinstance(outcome, Rejection):
        assert outcome.reason_code and outcome.reason
        if outcome.event is not None:
            assert outcome.event.error.code == outcome.reason_code
        return outcome
    assert isinstance(outcome, RequestInfo)
    conn = CONNECTIONS[outcome.connection]
    policy = policy_for(conn, can_reconcile=False, can_cancel=False, defaults=Policy())
    tr = step(None, RequestReceived(outcome), Context(now_ms, 0.5, policy))
    assert tr.persist and tr.state is not None
    assert tr.state.status in (Status.ACCEPTED, Status.REJECTED)
    record = CODEC.encode("JobState", state_to_record(tr.state))
    assert len(record) + len(outcome.request_id.encode()) < RECORD_LIMIT, f"state record of {len(record)} bytes"
    return outcome


class TestFuzzedRequests:
    @settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def test_ingest_reads_or_rejects_and_the_first_step_holds(self, data: st.DataObject) -> None:
        now_ms = int(time.time() * 1000)
        check(fuzzed_request(HypothesisDraw(data), CONNECTIONS, max_bytes=MAX_BYTES, now_ms=now_ms), now_ms)

    def test_the_seeded_generator_gives_accepted_and_rejected_requests_of_every_vendor(self) -> None:
        """What an end-to-end run would publish: both outcomes, every vendor, reproducibly."""
        now_ms = int(time.time() * 1000)
        outcomes = [check(r, now_ms) for r in fuzzed_requests(CONNECTIONS, count=300, seed=7)]
        accepted = {o.vendor for o in outcomes if isinstance(o, RequestInfo)}
        reasons = {o.reason_code for o in outcomes if isinstance(o, Rejection)}
        assert accepted == set(CONNECTIONS) and {"state_too_large", "key_mismatch", "unknown_connection"} <= reasons
        again = [r.record["request_id"] for r in fuzzed_requests(CONNECTIONS, count=20, seed=7)]
        assert again == [o.record["request_id"] for o in fuzzed_requests(CONNECTIONS, count=20, seed=7)]


class TestLongStrings:
    """A string just under the request limit, in a job field the vendor accepts, made of
    characters JSON escapes (a control character becomes six bytes in the job's JSON)."""

    @pytest.mark.parametrize("unit", ["x", "\x01", "\u4e2d", "\U0001f600"])
    @pytest.mark.parametrize(("connection", "field"), [("unicommerce", "export_job_type_name"), ("itron", "tokens")])
    def test_a_job_string_near_the_limit_is_read_or_refused_never_too_big_to_store(
        self, unit: str, connection: str, field: str
    ) -> None:
        vendor = importlib.import_module(f"worker.simulators.{CONNECTIONS[connection].vendor}")
        job_type, job = vendor.sample_job()
        filler = unit * ((MAX_BYTES - 2048) // len(unit.encode()))
        job = {**job, field: {**job[field], "ServicePoint": filler} if field == "tokens" else filler}
        now_ms = int(time.time() * 1000)
        record = {**itron_request("long-1", connection=connection), "job": (job_type, job)}
        outcome = check(FuzzedRequest(b"long-1", record), now_ms)
        if isinstance(outcome, Rejection):
            assert outcome.reason_code == "state_too_large" and "JSON" in outcome.reason
