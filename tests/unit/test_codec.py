"""Wire format: single-object encoding by default, registry framing when configured."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import itron_connection
from worker.codec import SOE_MAGIC, Codec, SchemaSet, canonical_form, crc64_avro, epoch_ms, schemas_dir
from worker.engine.model import RequestInfo
from worker.errors import DecodeError
from worker.ingest import Ingest
from worker.testing import itron_request

CODEC = Codec()
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def sample(name: str) -> dict[str, Any]:
    if name == "ExportRequested":
        return itron_request("req-1")
    if name == "JobStatusChanged":
        return {
            "request_id": "r", "vendor": "itron", "vendor_job_id": "j", "status": "RUNNING",
            "previous_status": "SUBMITTED", "vendor_status": "Running", "sequence": 3, "occurred_at": NOW,
            "error": {"code": "x", "message": "y", "retryable": True}, "possible_duplicate": True,
        }  # fmt: skip
    if name == "FileReady":
        return {
            "request_id": "r", "vendor": "itron", "vendor_job_id": "j", "url": "https://x/y.zip",
            "expires_at": NOW, "format": "csv.zip", "size_bytes": 10, "sha256": "ab", "produced_at": NOW,
        }  # fmt: skip
    if name == "DeadLetter":
        return {
            "topic": "export.requests", "partition": 1, "offset": 7, "key": b"k", "value": b"\x00\x01",
            "headers": [{"key": "h", "value": b"v"}], "reason_code": "not_avro", "reason": "bad", "failed_at": NOW,
        }  # fmt: skip
    from worker.engine.model import JobState, Phase, Status
    from worker.records import state_to_record

    state = JobState("r", "t", "c", "itron", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, vendor_job_id="j")
    return state_to_record(state)


class TestFingerprint:
    def test_crc64_matches_the_java_reference_for_null(self) -> None:
        """Apache Avro Java: SchemaNormalization.parsingFingerprint64(NULL) = 7195948357588979594."""
        assert crc64_avro(b'"null"') == 7195948357588979594

    def test_logical_types_are_stripped_from_the_canonical_form(self) -> None:
        """Java gives -7003748394904015037 for a record with a timestamp-millis field."""
        schema = fastavro.parse_schema(
            {
                "type": "record",
                "name": "A",
                "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
            }
        )
        value = crc64_avro(to_parsing_canonical_form(schema).encode())
        assert value - (1 << 64) == -7003748394904015037


class TestSingleObjectEncoding:
    @pytest.mark.parametrize("name", ["ExportRequested", "JobStatusChanged", "FileReady", "DeadLetter", "JobState"])
    def test_round_trip(self, name: str) -> None:
        data = CODEC.encode(name, sample(name))
        assert data[:2] == SOE_MAGIC
        assert data[2:10] == CODEC.schemas.by_name[name].fingerprint
        decoded = CODEC.decode(name, data)
        assert decoded["request_id" if name != "DeadLetter" else "reason_code"] == sample(name).get(
            "request_id" if name != "DeadLetter" else "reason_code"
        )

    def test_job_union_keeps_its_branch_name(self) -> None:
        decoded = CODEC.decode("ExportRequested", CODEC.encode("ExportRequested", itron_request("r")))
        assert decoded["job"][0] == "export.v1.ItronBatchRequest"

    def test_wrong_record_type_is_a_schema_mismatch(self) -> None:
        data = CODEC.encode("FileReady", sample("FileReady"))
        with pytest.raises(DecodeError) as err:
            CODEC.decode("ExportRequested", data)
        assert err.value.reason_code == "schema_mismatch"

    def test_unknown_fingerprint_is_refused_with_its_value(self) -> None:
        data = SOE_MAGIC + b"\x01" * 8 + b"\x00"
        with pytest.raises(DecodeError) as err:
            CODEC.decode("ExportRequested", data)
        assert err.value.reason_code == "unknown_schema" and "0101010101010101" in err.value.message

    @pytest.mark.parametrize(
        ("data", "code"),
        [
            (b"", "not_avro"),
            (b'{"json": true}', "not_avro"),
            (b"\xc3\x01\x00", "not_avro"),
            (b"\x00\x00\x00\x00\x01rest", "unknown_schema"),  # registry framing, no registry configured
        ],
    )
    def test_undecodable_bytes_get_a_reason(self, data: bytes, code: str) -> None:
        with pytest.raises(DecodeError) as err:
            CODEC.decode("ExportRequested", data)
        assert err.value.reason_code == code

    def test_trailing_bytes_are_refused(self) -> None:
        data = CODEC.encode("ExportRequested", itron_request("r")) + b"\x00"
        with pytest.raises(DecodeError, match="trailing"):
            CODEC.decode("ExportRequested", data)

    def test_older_writer_schema_is_resolved_to_ours(self) -> None:
        """A producer still on a schema without `replay_of` is read with the default."""
        raw = json.loads((schemas_dir() / "ExportRequested.avsc").read_text())
        raw["fields"] = [f for f in raw["fields"] if f["name"] != "replay_of"]
        schemas = SchemaSet()
        old = schemas.add_writer("ExportRequested", raw)
        record = itron_request("old-1")
        record.pop("replay_of")
        buf = io.BytesIO()
        buf.write(SOE_MAGIC + old.fingerprint)
        fastavro.schemaless_writer(buf, old.parsed, record)
        decoded = Codec(schemas).decode("ExportRequested", buf.getvalue())
        assert decoded["request_id"] == "old-1" and decoded["replay_of"] is None

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_fuzzed_bytes_decode_or_fail_with_a_reason(self, data: bytes) -> None:
        check_decodes_or_explains(data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzzed_bodies_behind_a_valid_header_decode_or_fail_with_a_reason(self, body: bytes) -> None:
        check_decodes_or_explains(SOE_MAGIC + CODEC.schemas.by_name["ExportRequested"].fingerprint + body)


REASONS = {"not_avro", "unknown_schema", "schema_mismatch"}


def check_decodes_or_explains(data: bytes) -> None:
    """Any bytes either decode to a request or raise DecodeError with a known reason."""
    try:
        record = CODEC.decode("ExportRequested", data)
    except DecodeError as exc:
        assert exc.reason_code in REASONS and exc.message
    else:
        assert isinstance(record["request_id"], str) and isinstance(record["job"], tuple)


class TestApacheAvroCompatibility:
    """The Apache Avro reference implementation (Python) must accept our schemas and data."""

    @pytest.mark.parametrize("name", ["ExportRequested", "JobStatusChanged", "FileReady", "DeadLetter", "JobState"])
    def test_schemas_are_valid_under_the_specification(self, name: str) -> None:
        text = (schemas_dir() / f"{name}.avsc").read_text()
        schema = avro.schema.parse(text, validate_enum_symbols=True, validate_names=True)
        assert schema.fullname == f"export.v1.{name}"

    def test_body_written_by_apache_avro_is_read_by_the_worker(self) -> None:
        schema = avro.schema.parse((schemas_dir() / "ExportRequested.avsc").read_text())
        record = itron_request("from-avro")
        record["requested_at"] = NOW
        record["job"] = record["job"][1]  # apache avro picks the union branch itself
        buf = io.BytesIO()
        avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(buf))
        framed = SOE_MAGIC + CODEC.schemas.by_name["ExportRequested"].fingerprint + buf.getvalue()
        decoded = CODEC.decode("ExportRequested", framed)
        assert decoded["request_id"] == "from-avro" and decoded["job"][0] == "export.v1.ItronBatchRequest"

    def test_events_written_by_the_worker_are_read_by_apache_avro(self) -> None:
        schema = avro.schema.parse((schemas_dir() / "JobStatusChanged.avsc").read_text())
        data = CODEC.encode("JobStatusChanged", sample("JobStatusChanged"))
        record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
        assert record["status"] == "RUNNING" and record["sequence"] == 3 and record["possible_duplicate"] is True


def apache_avro_single_object(name: str, record: dict[str, Any], schema_text: str | None = None) -> bytes:
    """``record`` framed as a Python producer using the Apache Avro library frames it: C3 01,
    the library's own CRC-64-AVRO fingerprint of the schema, then the body it writes."""
    schema = avro.schema.parse(schema_text or (schemas_dir() / f"{name}.avsc").read_text())
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(buf))
    return SOE_MAGIC + schema.fingerprint("CRC-64-AVRO") + buf.getvalue()


def avro_library_request(request_id: str) -> dict[str, Any]:
    record = itron_request(request_id)
    record["job"] = record["job"][1]  # apache avro picks the union branch itself
    return record


class TestOtherLibrariesFingerprints:
    """Apache Avro for Python (1.10-1.12) and Rust apache-avro compute another Parsing
    Canonical Form than the specification (and Java, and fastavro) for schemas with
    logical types; a request they single-object encode must still be read."""

    RUST_TEST_SCHEMA = {
        "type": "record",
        "name": "test",
        "fields": [
            {"name": "a", "type": "long", "default": 42},
            {"name": "b", "type": "string"},
            {"name": "c", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }

    def test_the_avro_library_fingerprints_our_request_schema_differently(self) -> None:
        """The premise, checked on the library itself: its fingerprint is not the specification's."""
        schema = avro.schema.parse((schemas_dir() / "ExportRequested.avsc").read_text())
        assert '"requested_at","type":{"type":"long"}' in schema.canonical_form
        assert schema.fingerprint("CRC-64-AVRO") != CODEC.schemas.by_name["ExportRequested"].fingerprint

    def test_request_single_object_encoded_by_apache_avro_python_is_accepted_by_ingest(self) -> None:
        data = apache_avro_single_object("ExportRequested", avro_library_request("from-py-avro"))
        ingest = Ingest(CODEC, {"itron": itron_connection("http://127.0.0.1:1")}, max_bytes=1 << 20)
        outcome = asyncio.run(ingest.read(b"from-py-avro", data, partition=0, offset=0, now_ms=epoch_ms(NOW)))
        assert isinstance(outcome, RequestInfo), outcome
        assert outcome.request_id == "from-py-avro" and outcome.vendor == "itron"

    @pytest.mark.parametrize("name", ["ExportRequested", "JobStatusChanged", "FileReady", "DeadLetter", "JobState"])
    def test_every_schema_is_known_by_the_avro_librarys_fingerprint(self, name: str) -> None:
        fingerprint = avro.schema.parse((schemas_dir() / f"{name}.avsc").read_text()).fingerprint("CRC-64-AVRO")
        assert CODEC.schemas.by_fingerprint[fingerprint] is CODEC.schemas.by_name[name]

    def test_a_history_version_written_by_the_avro_library_is_read(self, tmp_path: Path) -> None:
        """An older request schema (no replay_of) fingerprinted the Python library's way."""
        for f in schemas_dir().glob("*.avsc"):
            (tmp_path / f.name).write_text(f.read_text())
        old = json.loads((schemas_dir() / "ExportRequested.avsc").read_text())
        old["fields"] = [f for f in old["fields"] if f["name"] != "replay_of"]
        (tmp_path / "history").mkdir()
        (tmp_path / "history" / "ExportRequested.1.avsc").write_text(json.dumps(old))
        record = avro_library_request("old-py")
        record.pop("replay_of")
        data = apache_avro_single_object("ExportRequested", record, json.dumps(old))
        decoded = Codec(SchemaSet(tmp_path)).decode("ExportRequested", data)
        assert decoded["request_id"] == "old-py" and decoded["replay_of"] is None

    @pytest.mark.parametrize("name", ["ExportRequested", "JobStatusChanged", "FileReady", "DeadLetter", "JobState"])
    def test_the_canonical_forms_match_their_libraries(self, name: str) -> None:
        """Ours is fastavro's (the specification's); "wrapped" is the Python library's."""
        raw = json.loads((schemas_dir() / f"{name}.avsc").read_text())
        assert canonical_form(raw) == to_parsing_canonical_form(fastavro.parse_schema(raw))
        assert canonical_form(raw, "wrapped") == avro.schema.parse(json.dumps(raw)).canonical_form

    def test_the_canonical_forms_match_rusts_own_fingerprints(self) -> None:
        """apache-avro's test_schema_fingerprint: 28cf0a67d9937bb3 before AVRO-4004 (logicalType
        kept), 92f2ccef718c6754 since (the same {"type":"long"} as the Python library)."""

        def rabin(form: str) -> str:
            return crc64_avro(canonical_form(self.RUST_TEST_SCHEMA, form).encode()).to_bytes(8, "little").hex()

        assert rabin("logical") == "28cf0a67d9937bb3"
        assert rabin("wrapped") == "92f2ccef718c6754"

    def test_a_request_fingerprinted_the_old_rust_way_is_accepted(self) -> None:
        raw = json.loads((schemas_dir() / "ExportRequested.avsc").read_text())
        fp = crc64_avro(canonical_form(raw, "logical").encode()).to_bytes(8, "little")
        body = CODEC.encode("ExportRequested", itron_request("from-rust"))[10:]
        assert CODEC.decode("ExportRequested", SOE_MAGIC + fp + body)["request_id"] == "from-rust"

    def test_unknown_fingerprint_reason_names_what_was_expected(self) -> None:
        data = SOE_MAGIC + b"\x01" * 8 + b"\x00"
        with pytest.raises(DecodeError) as err:
            CODEC.decode("ExportRequested", data)
        message = err.value.message
        current = CODEC.schemas.by_name["ExportRequested"].fingerprint[::-1].hex()
        python_avro = avro.schema.parse((schemas_dir() / "ExportRequested.avsc").read_text()).fingerprint()[::-1].hex()
        assert "got 0101010101010101" in message
        assert current in message and python_avro in message and "ExportRequested" in message


class TestSchemaHistory:
    def test_states_written_by_an_earlier_version_are_read(self, tmp_path: Path) -> None:
        """A worker with a newer JobState (one more field) reads the older writer's record."""
        import shutil

        for f in schemas_dir().glob("*.avsc"):
            shutil.copy(f, tmp_path / f.name)
        old = json.loads((schemas_dir() / "JobState.avsc").read_text())
        (tmp_path / "history").mkdir()
        (tmp_path / "history" / "JobState.1.avsc").write_text(json.dumps(old))
        new = json.loads(json.dumps(old))
        new["fields"].append({"name": "priority", "type": "int", "default": 5})
        (tmp_path / "JobState.avsc").write_text(json.dumps(new))
        old_bytes = CODEC.encode("JobState", sample("JobState"))
        decoded = Codec(SchemaSet(tmp_path)).decode("JobState", old_bytes)
        assert decoded["request_id"] == "r" and decoded["priority"] == 5
        with pytest.raises(DecodeError, match="unknown writer schema"):
            (tmp_path / "history" / "JobState.1.avsc").unlink()
            Codec(SchemaSet(tmp_path)).decode("JobState", old_bytes)


class TestTimestamps:
    @pytest.mark.parametrize("millis", [253_402_300_800_000, 2**63 - 1, -(2**63)])
    def test_a_timestamp_beyond_year_9999_is_refused_saying_so(self, millis: int) -> None:
        """A schema-valid value fastavro cannot turn into a datetime: dead-lettered, and the
        reason names the likely cause instead of only calling the body corrupt."""
        record = {**itron_request("far"), "requested_at": millis}
        with pytest.raises(DecodeError, match="timestamp outside years 1-9999") as err:
            CODEC.decode("ExportRequested", CODEC.encode("ExportRequested", record))
        assert err.value.reason_code == "not_avro"
