"""Interop with Apache Avro's Java reference implementation, using only schemas/*.avsc:
it decodes what the worker writes (single-object encoding, fingerprint checked) and
writes requests the worker accepts."""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from worker.codec import Codec, schemas_dir
from worker.config import ConnectionConfig, SecretRef
from worker.embedded.broker import cache_dir
from worker.engine.model import RequestInfo
from worker.ingest import Ingest
from worker.records import state_to_record
from worker.testing import itron_request

HERE = Path(__file__).parent
CODEC = Codec()


@pytest.fixture(scope="module")
def avro_classpath() -> str:
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if java is None or mvn is None:
        pytest.fail("Java and Maven are required for the Avro interop test (they also run the embedded broker)")
    libs = cache_dir() / "avro-java-1.12.0"
    if not (libs / ".complete").exists():
        libs.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [mvn, "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
            check=True,
            capture_output=True,
        )
        (libs / ".complete").write_text("ok")
    return f"{libs}/*"


def java(classpath: str, *args: str) -> str:
    result = subprocess.run(
        ["java", "-cp", classpath, str(HERE / "AvroInterop.java"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class TestJavaReadsWorkerOutput:
    def test_status_event_decodes_with_the_java_message_decoder(self, avro_classpath: str) -> None:
        event = {
            "request_id": "r-java", "vendor": "itron", "vendor_job_id": "j1", "status": "SUCCEEDED",
            "previous_status": "RUNNING", "vendor_status": "Success", "sequence": 7,
            "occurred_at": dt.datetime(2026, 11, 23, tzinfo=dt.UTC), "error": None, "possible_duplicate": False,
        }  # fmt: skip
        data = CODEC.encode("JobStatusChanged", event)
        out = java(avro_classpath, "decode", str(schemas_dir()), "JobStatusChanged", base64.b64encode(data).decode())
        assert '"request_id": "r-java"' in out and '"status": "SUCCEEDED"' in out and '"sequence": 7' in out
        fingerprint = int(out.split("fingerprint=")[1].strip(), 16)
        assert fingerprint.to_bytes(8, "little") == data[2:10]

    def test_file_ready_decodes_with_the_java_message_decoder(self, avro_classpath: str) -> None:
        record = {
            "request_id": "r-file", "vendor": "itron", "vendor_job_id": "j", "url": "https://x/y.zip",
            "expires_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "format": "csv.zip", "size_bytes": 12,
            "sha256": "ab" * 32, "produced_at": dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
        }  # fmt: skip
        data = CODEC.encode("FileReady", record)
        out = java(avro_classpath, "decode", str(schemas_dir()), "FileReady", base64.b64encode(data).decode())
        assert '"url": "https://x/y.zip"' in out and '"size_bytes": 12' in out

    def test_job_state_decodes_with_the_java_message_decoder(self, avro_classpath: str) -> None:
        from worker.engine.model import JobState, Phase, Status

        state = JobState("r-state", "t", "c", "itron", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2)
        data = CODEC.encode("JobState", state_to_record(state))
        out = java(avro_classpath, "decode", str(schemas_dir()), "JobState", base64.b64encode(data).decode())
        assert '"request_id": "r-state"' in out and '"phase": "ACTIVE"' in out


class TestWorkerReadsJavaRequests:
    def test_request_encoded_by_java_is_accepted(self, avro_classpath: str) -> None:
        day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).date().isoformat()
        encoded = java(avro_classpath, "encode-request", str(schemas_dir()), "from-java", day).strip()
        data = base64.b64decode(encoded)
        assert data[:2] == b"\xc3\x01"
        decoded = CODEC.decode("ExportRequested", data)
        expected = CODEC.decode("ExportRequested", CODEC.encode("ExportRequested", _same_request_in_python(day)))
        assert decoded == expected  # (bytes may differ: map entry order is not canonical)
        conn = ConnectionConfig(
            vendor="itron", base_url="http://127.0.0.1:1", client_id="c", client_secret=SecretRef(value="s"),
            subscription_id="7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10", subscriber_id="d",
        )  # fmt: skip
        ingest = Ingest(CODEC, {"itron": conn}, max_bytes=1 << 20)
        outcome = ingest.validate(
            CODEC.decode("ExportRequested", data), b"from-java", partition=0, offset=0, now_ms=1763900000000
        )
        assert isinstance(outcome, RequestInfo) and outcome.tenant == "java-tenant"
        assert '"filetype":"Json"' in outcome.job_json


def _same_request_in_python(day: str) -> dict[str, object]:
    record = itron_request("from-java", tenant="java-tenant", labels={"producer": "java"})
    record["requested_at"] = dt.datetime.fromtimestamp(1763900000, dt.UTC)
    record["job"] = (
        "export.v1.ItronBatchRequest",
        {
            "filetype": "Json",
            "tokens": {"StartEventDate": day, "ServicePoint": "9000053409"},
            "is_ohs_request": False,
            "subscription_id": None,
        },
    )
    return record
