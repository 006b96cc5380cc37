"""Compiled Avro writers write exactly the bytes fastavro writes, and leave every value
they do not write exactly as fastavro would to fastavro."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.avro_writer import compile_writer, write_long
from worker.codec import Codec, SchemaInfo

CODEC = Codec()
SCHEMAS: list[SchemaInfo] = [*CODEC.schemas.by_name.values(), *CODEC.schemas.previous.values()]
COMPILED = [info for info in SCHEMAS if info.write is not None]

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=40),
    # and lengths about 64 bytes, where a length's varint grows a byte
    "string": st.one_of(st.text(max_size=40), st.text(alphabet="ab", min_size=62, max_size=66)),
}


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (a parsed schema), records also as (name, fields) pairs in a union."""
    if isinstance(schema, list):
        return st.one_of(*(_branch(branch, named) for branch in schema))
    if isinstance(schema, str):
        return _PRIMITIVES[schema] if schema in _PRIMITIVES else values(named[schema], named)
    if "name" in schema:
        named.setdefault(schema["name"], schema)
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values(schema["values"], named), max_size=4)
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=4)
    assert kind == "record", kind
    return st.fixed_dictionaries({f["name"]: values(f["type"], named) for f in schema["fields"]})


def _branch(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A union branch's values: a record's also in fastavro's (full name, fields) notation."""
    fields = values(schema, named)
    if isinstance(schema, dict) and schema["type"] == "record":
        return st.one_of(fields, st.tuples(st.just(schema["name"]), fields))
    return fields


def records(info: SchemaInfo) -> st.SearchStrategy[dict[str, Any]]:
    return values(info.parsed, {})


def fastavro_body(info: SchemaInfo, record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, info.parsed, record)
    return buf.getvalue()


def test_our_schemas_have_compiled_writers_but_the_request() -> None:
    """The request's job is a union of several records: fastavro writes requests."""
    assert sorted(info.name for info in COMPILED) == [
        "DeadLetter",
        "FileReady",
        "JobState",
        "JobState",
        "JobStatusChanged",
    ]


@pytest.mark.parametrize("info", COMPILED, ids=lambda info: f"{info.name}-{info.fingerprint.hex()}")
@settings(max_examples=150)
@given(data=st.data())
def test_a_compiled_writer_writes_what_fastavro_writes(info: SchemaInfo, data: st.DataObject) -> None:
    record = data.draw(records(info))
    assert info.write is not None
    assert info.write(record) == fastavro_body(info, record)


@given(st.integers(-(2**63), 2**63 - 1))
def test_longs_are_zig_zag_varints(n: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert write_long(n) == buf.getvalue()


class TestLeftToFastavro:
    def test_a_datetime_for_a_timestamp(self) -> None:
        record = {
            "request_id": "r-1",
            "vendor": "itron",
            "status": "RUNNING",
            "sequence": 1,
            "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        }
        info = CODEC.schemas.by_name["JobStatusChanged"]
        assert info.write is not None
        with pytest.raises(TypeError):
            info.write(record)
        encoded = CODEC.encode("JobStatusChanged", record)
        assert encoded[10:] == fastavro_body(info, record)
        assert CODEC.decode("JobStatusChanged", encoded)["occurred_at"] == record["occurred_at"]

    @pytest.mark.parametrize(
        ("field", "value"),
        [("sequence", 2**64), ("status", "NOT_A_STATUS"), ("request_id", 7), ("possible_duplicate", None)],
        ids=["long-overflow", "unknown-symbol", "int-for-string", "missing-boolean"],
    )
    def test_what_fastavro_refuses_is_refused_as_fastavro_refuses_it(self, field: str, value: Any) -> None:
        record = {"request_id": "r-1", "vendor": "itron", "status": "RUNNING", "sequence": 1, "occurred_at": 0}
        record[field] = value
        info = CODEC.schemas.by_name["JobStatusChanged"]
        try:
            expected: bytes | type[Exception] = fastavro_body(info, record)
        except Exception as exc:
            expected = type(exc)
        if isinstance(expected, bytes):
            assert CODEC.encode("JobStatusChanged", record)[10:] == expected
        else:
            with pytest.raises(expected):
                CODEC.encode("JobStatusChanged", record)

    def test_a_recursive_schema_gets_no_compiled_writer(self) -> None:
        schema = {
            "type": "record",
            "name": "Node",
            "fields": [{"name": "next", "type": ["null", "Node"]}, {"name": "n", "type": "long"}],
        }
        assert compile_writer(fastavro.parse_schema(schema, _write_hint=True)) is None

    def test_a_fixed_gets_no_compiled_writer(self) -> None:
        schema = {
            "type": "record",
            "name": "F",
            "fields": [{"name": "f", "type": {"type": "fixed", "name": "x", "size": 2}}],
        }
        assert compile_writer(fastavro.parse_schema(schema, _write_hint=True)) is None
