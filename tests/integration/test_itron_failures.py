"""Bad input and vendor trouble never stop the worker; each gets a clear outcome.

One worker runs for the whole module (starting one costs seconds); every test uses
its own request ids.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import itron_connection, make_settings, running
from worker.codec import Codec
from worker.config import Settings, TopicSettings
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import Output, OutputReader, Publisher, itron_request, terminal


@dataclass
class Pipeline:
    settings: Settings
    sim: ItronSimulator
    pub: Publisher
    reader: OutputReader
    worker: Worker

    async def until_terminal(self, *request_ids: str, timeout: float = 30) -> Output:
        return await self.reader.wait_for(lambda o: terminal(o, request_ids), timeout=timeout, what="terminal status")


@pytest.fixture(scope="module")
async def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    topics = TopicSettings(partitions=3).prefixed(f"f{uuid.uuid4().hex[:8]}.")
    settings = make_settings(kafka_bootstrap, topics, tmp_path_factory.mktemp("results"))
    sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=3)
    await sim.start()
    connections = {"itron": itron_connection(sim.base_url)}
    worker = Worker(settings, connections=connections)
    async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
        yield Pipeline(settings, sim, pub, reader, worker)
    await sim.stop()


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def api_calls(sim: ItronSimulator, method: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["path"].startswith("/dpss/") and (method is None or r["method"] == method)]


class TestIdentity:
    async def test_every_vendor_call_names_the_worker_that_made_it(self, pipeline: Pipeline) -> None:
        """The User-Agent says which worker called (a vendor's support, and the chaos
        run's accounting of who held an answer, rely on it)."""
        from worker import __version__

        r = rid("ua")
        await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        await pipeline.until_terminal(r)
        agents = {c["headers"].get("User-Agent") for c in api_calls(pipeline.sim)}
        assert agents == {f"export-worker/{__version__} ({pipeline.settings.instance_id})"}


class TestVendorTrouble:
    async def test_vendor_failure_ends_failed_without_a_file(self, pipeline: Pipeline) -> None:
        pipeline.sim.faults.plan.next_fail = 1
        r = rid("fails")
        await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(r)
        assert out.statuses(r)[-1] == "FAILED"
        assert out.events(r)[-1]["error"]["code"] == "vendor_failed"
        assert out.files_for(r) == []

    async def test_token_expiry_mid_job_refreshes_once_and_finishes(self, pipeline: Pipeline) -> None:
        r = rid("token")
        tokens_before = len([q for q in pipeline.sim.requests if q["path"] == "/connect/token"])
        pipeline.sim.timing = Timing(stages=(1.0, 1.0, 1.0))  # this job runs long enough to expire a token
        try:
            await pipeline.pub.send(itron_request(r))
            await pipeline.pub.flush()
            await pipeline.reader.wait_for(lambda o: "SUBMITTED" in o.statuses(r), what="submitted")
            assert "SUCCEEDED" not in (await pipeline.reader.read()).statuses(r)
            pipeline.sim.tokens.clear()  # every token issued so far is now refused (401)
            out = await pipeline.until_terminal(r)
        finally:
            pipeline.sim.timing = Timing(stages=(0.1, 0.1, 0.1))
        assert out.statuses(r)[-1] == "SUCCEEDED"
        tokens_after = len([q for q in pipeline.sim.requests if q["path"] == "/connect/token"])
        assert tokens_after == tokens_before + 1

    async def test_429_retry_after_is_honoured_for_the_whole_connection(self, pipeline: Pipeline) -> None:
        plan = pipeline.sim.faults.plan
        plan.retry_after_s = 1.0
        plan.next_429 = 1
        first = len(pipeline.sim.requests)
        r = rid("limited")
        await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(r)
        assert out.statuses(r)[-1] == "SUCCEEDED"
        calls = [q for q in pipeline.sim.requests[first:] if q["path"].startswith("/dpss/")]
        assert len(calls) >= 2
        # The first call got the 429; nothing went to the vendor API until Retry-After passed.
        assert calls[1]["at"] - calls[0]["at"] >= 1.0


class TestBadInput:
    async def test_bytes_that_are_not_avro_are_dead_lettered_and_the_worker_goes_on(self, pipeline: Pipeline) -> None:
        await pipeline.pub.raw(b'{"this": "is json"}', key=b"junk-1")
        good = rid("after-junk")
        await pipeline.pub.send(itron_request(good))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(good)
        assert out.statuses(good)[-1] == "SUCCEEDED"
        letters = [d for d in out.dlq if d["key"] == b"junk-1"]
        assert len(letters) == 1
        assert letters[0]["reason_code"] == "not_avro" and letters[0]["value"] == b'{"this": "is json"}'
        assert letters[0]["topic"] == pipeline.settings.topics.requests and letters[0]["offset"] >= 0

    async def test_range_older_than_13_months_is_rejected_before_any_call(self, pipeline: Pipeline) -> None:
        r = rid("too-old")
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=500)).date().isoformat()
        calls_before = len(api_calls(pipeline.sim, "POST"))
        await pipeline.pub.send(itron_request(r, tokens={"StartEventDate": old, "EndEventDate": old}))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(r)
        assert out.statuses(r) == ["REJECTED"]
        assert out.events(r)[0]["error"]["code"] == "out_of_range"
        assert [d["reason_code"] for d in out.dlq if d["request_id"] == r] == ["out_of_range"]
        assert len(api_calls(pipeline.sim, "POST")) == calls_before

    async def test_unknown_connection_is_rejected_with_a_reason(self, pipeline: Pipeline) -> None:
        r = rid("noconn")
        await pipeline.pub.send(itron_request(r, connection="does-not-exist"))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(r)
        assert out.statuses(r) == ["REJECTED"]
        assert "does-not-exist" in out.events(r)[0]["error"]["message"]
        assert [d["reason_code"] for d in out.dlq if d["request_id"] == r] == ["unknown_connection"]

    async def test_key_other_than_the_request_id_is_dead_lettered(self, pipeline: Pipeline) -> None:
        r = rid("badkey")
        await pipeline.pub.send(itron_request(r), key=b"something-else")
        await pipeline.pub.flush()
        out = await pipeline.reader.wait_for(lambda o: any(d["key"] == b"something-else" for d in o.dlq))
        assert [d["reason_code"] for d in out.dlq if d["key"] == b"something-else"] == ["key_mismatch"]
        assert out.statuses(r) == []

    async def test_unknown_writer_fingerprint_is_dead_lettered(self, pipeline: Pipeline) -> None:
        data = Codec().encode("ExportRequested", itron_request("fp"))
        forged = data[:2] + bytes(8) + data[10:]
        await pipeline.pub.raw(forged, key=b"forged-fp")
        await pipeline.pub.flush()
        out = await pipeline.reader.wait_for(lambda o: any(d["key"] == b"forged-fp" for d in o.dlq))
        assert [d["reason_code"] for d in out.dlq if d["key"] == b"forged-fp"] == ["unknown_schema"]


class TestDuplicates:
    async def test_second_request_with_a_known_id_creates_no_vendor_job(self, pipeline: Pipeline) -> None:
        r = rid("dup")
        await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        await pipeline.until_terminal(r)
        await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        out = await pipeline.reader.wait_for(lambda o: "DUPLICATE" in o.statuses(r), what="duplicate")
        from worker.vendors.base import JobSpec
        from worker.vendors.itron import correlation_id

        key = correlation_id(JobSpec(r, "acme", "itron", {}))
        statuses = out.statuses(r)
        assert statuses.count("SUBMITTED") == 1
        assert len([j for j in pipeline.sim.jobs.values() if j.match_key == key]) == 1
        # A producer's duplicate of a finished request announces nothing again (only an
        # operator's replay does): DUPLICATE says the file was announced and the link is valid.
        files = out.files_for(r)
        assert len(files) == 1 and files[0]["reannounced"] is False
        duplicate = [e for e in out.events(r) if e["status"] == "DUPLICATE"]
        assert duplicate[0]["error"]["code"] == "already_announced"
        assert [e["sequence"] for e in out.events(r)] == list(range(1, len(statuses) + 1))

    async def test_sequences_are_gapless_per_request(self, pipeline: Pipeline) -> None:
        ids = [rid("seq") for _ in range(5)]
        for r in ids:
            await pipeline.pub.send(itron_request(r))
        await pipeline.pub.flush()
        out = await pipeline.until_terminal(*ids)
        for r in ids:
            events = out.events(r)
            assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
            assert events[0]["status"] == "ACCEPTED" and events[-1]["status"] == "SUCCEEDED"
            assert all(e["previous_status"] == p["status"] for p, e in itertools.pairwise(events))
