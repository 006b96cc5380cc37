"""The s3:// result store against a local S3-compatible server (moto in server mode):
an OpenGate job's collected results land in the bucket and FileReady announces them
with their real size and sha256."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import FAST_POLICY, running
from worker.config import Settings
from worker.result_store import S3ResultStore, result_store_from_url
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.opengate import OpenGateSimulator, demo_connection, sample_job
from worker.testing import OutputReader, Publisher, terminal

BUCKET = "export-results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Credentials for the local server only; S3ResultStore reads the standard AWS settings.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


class TestS3ResultStore:
    async def test_put_stores_the_bytes_and_reports_their_digest(self, s3: Any) -> None:
        store = result_store_from_url(f"s3://{BUCKET}/runs")
        assert isinstance(store, S3ResultStore)
        data = b'{"entity": "meter-1", "result": "SUCCESSFUL"}\n'
        stored = await store.put("opengate/r-1.jsonl", data, content_type="application/x-ndjson")
        assert stored.url == f"s3://{BUCKET}/runs/opengate/r-1.jsonl"
        assert stored.size_bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
        obj = s3.get_object(Bucket=BUCKET, Key="runs/opengate/r-1.jsonl")
        assert obj["Body"].read() == data
        assert obj["ContentType"] == "application/x-ndjson"

    async def test_missing_bucket_is_a_clear_retriable_error(self, s3: Any) -> None:
        from worker.errors import ResultStoreError

        store = result_store_from_url("s3://no-such-bucket/x")
        with pytest.raises(ResultStoreError, match="no-such-bucket") as err:
            await store.put("k", b"x", content_type="text/plain")
        assert err.value.retriable

    async def test_opengate_results_are_announced_from_the_bucket(self, s3: Any, settings: Settings) -> None:
        sim = OpenGateSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=3)
        await sim.start()
        try:
            conn = demo_connection(sim.base_url).model_copy(update={"policy": FAST_POLICY, "rate_per_s": 200.0})
            worker = Worker(
                settings, connections={"opengate": conn}, result_store=result_store_from_url(f"s3://{BUCKET}")
            )
            job_type, job = sample_job()
            request = {
                "request_id": "og-s3-1", "tenant": "acme", "connection": "opengate",
                "requested_at": 1_763_900_000_000, "correlation_id": None, "labels": {},
                "job": (job_type, job), "replay_of": None,
            }  # fmt: skip
            async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
                await pub.send(request)
                await pub.flush()
                out = await reader.wait_for(lambda o: terminal(o, ["og-s3-1"]), timeout=30)
        finally:
            await sim.stop()
        assert out.statuses("og-s3-1")[-1] == "SUCCEEDED"
        (file,) = out.files_for("og-s3-1")
        assert file["url"].startswith(f"s3://{BUCKET}/") and file["format"] == "jsonl"
        key = file["url"].removeprefix(f"s3://{BUCKET}/")
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert file["size_bytes"] == len(body) and file["sha256"] == hashlib.sha256(body).hexdigest()
        assert len(body.splitlines()) == len(job["target"][1]["entities"])
