"""The fast peek of phase and next_action_at_ms agrees with a full decode."""

from __future__ import annotations

import copy
import gc
import io
import json
import weakref
from collections.abc import Mapping
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.codec import Codec, SchemaInfo, schemas_dir
from worker.engine.model import ErrorInfo, FileInfo, JobState, Phase, Status, TraceContext
from worker.errors import DecodeError
from worker.records import state_to_record
from worker.store import peek
from worker.store.peek import Peeked, open_peeker, peek_body, peek_open

LONG = st.integers(-(2**63), 2**63 - 1)
INT = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(st.characters(codec="utf-8"), max_size=80)
LONG_TEXT = st.text(st.characters(codec="utf-8"), max_size=400)  # multi-byte lengths


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


states = st.builds(
    JobState,
    request_id=TEXT,
    tenant=TEXT,
    connection=TEXT,
    vendor=TEXT,
    job_json=LONG_TEXT,
    requested_at_ms=LONG,
    origin_partition=INT,
    origin_offset=LONG,
    phase=st.sampled_from(Phase),
    status=st.sampled_from(Status),
    sequence=LONG,
    created_at_ms=LONG,
    updated_at_ms=LONG,
    correlation_id=optional(TEXT),
    labels=st.dictionaries(TEXT, TEXT, max_size=5),
    replay_of=optional(TEXT),
    vendor_status=optional(TEXT),
    vendor_job_id=optional(TEXT),
    submit_attempt=INT,
    possible_duplicate=st.booleans(),
    cancel_requested=st.booleans(),
    next_action_at_ms=LONG,
    poll_attempt=INT,
    failing_since_ms=LONG,
    file=optional(st.builds(FileInfo, url=TEXT, format=TEXT, expires_at_ms=optional(LONG))),
    error=optional(st.builds(ErrorInfo, code=TEXT, message=TEXT, retryable=st.booleans())),
    finished_at_ms=optional(LONG),
    trace=optional(
        st.builds(
            TraceContext,
            traceparent=TEXT,
            tracestate=optional(TEXT),
            last_span_id=optional(TEXT),
            last_call_at_ms=optional(LONG),
        )
    ),
)


def full(codec: Codec, value: bytes) -> Peeked:
    record = codec.decode("JobState", value)
    return (Phase(record["phase"]), record["next_action_at_ms"])


class FixedRegistry:
    """A registry that knows one schema under id 7 (the codec's SchemaRegistry protocol)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema

    def schema_id_for(self, subject: str) -> int:
        return 7

    def cached_schema(self, schema_id: int) -> Mapping[str, Any] | None:
        return self.schema if schema_id == 7 else None

    async def fetch_schema(self, schema_id: int) -> Mapping[str, Any]:
        raise AssertionError("not fetched in these tests")


CODEC = Codec()
CURRENT = json.loads((schemas_dir() / "JobState.avsc").read_text())


class TestPeek:
    @settings(max_examples=300, deadline=None)
    @given(states)
    def test_agrees_with_a_full_decode(self, state: JobState) -> None:
        """For any state, peek gives the phase and due time a full decode gives."""
        value = CODEC.encode("JobState", state_to_record(state))
        assert peek(value, CODEC) == full(CODEC, value) == (state.phase, state.next_action_at_ms)

    @settings(max_examples=50, deadline=None)
    @given(states)
    def test_agrees_under_registry_framing(self, state: JobState) -> None:
        """A value framed with a registry id of our schema peeks the same."""
        codec = Codec(registry=FixedRegistry(CURRENT))
        value = codec.encode("JobState", state_to_record(state), topic="export.jobs")
        assert value[0] == 0
        assert peek(value, codec) == (state.phase, state.next_action_at_ms)

    @settings(max_examples=200, deadline=None)
    @given(states)
    def test_the_current_schema_is_walked_not_decoded(self, state: JobState) -> None:
        """Values of the current schema never take the full decode (the slow path), and
        every peek reads what the state holds: phase and due time, with vendor and
        status (``peek_open``), the job body (``peek_body``)."""
        codec = Codec()
        value = codec.encode("JobState", state_to_record(state))

        def no_full_decode(name: str, data: bytes | None) -> dict[str, Any]:
            raise AssertionError("decoded in full")

        codec.decode = no_full_decode  # type: ignore[method-assign]
        assert peek(value, codec) == (state.phase, state.next_action_at_ms)
        assert peek_open(value, codec) == (state.phase, state.next_action_at_ms, state.vendor, state.status.value)
        assert peek_body(value, codec) == state.job_json

    def test_the_open_peek_falls_back_to_a_full_decode_for_other_layouts(self) -> None:
        """A writer whose vendor is not a plain string is decoded in full, and agrees."""
        older = copy.deepcopy(CURRENT)
        vendor = next(f for f in older["fields"] if f["name"] == "vendor")
        vendor["type"] = ["null", "string"]
        codec = Codec()
        writer = codec.schemas.add_writer("JobState", older, label="test")
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=9)
        value = _encode_with(writer, state_to_record(state))
        assert peek_open(value, codec) == (Phase.ACTIVE, 9, "v", "RUNNING")
        assert peek(value, codec) == (Phase.ACTIVE, 9)  # the due walk still takes the fast path

    def test_bad_utf8_in_a_captured_string_is_a_decode_error(self) -> None:
        """A vendor that is not UTF-8 falls back to the full decode, which refuses it."""
        state = JobState("r", "t", "c", "vv", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2)
        value = CODEC.encode("JobState", state_to_record(state))
        at = value.index(b"\x04vv")
        broken = value[: at + 1] + b"\xff\xfe" + value[at + 3 :]
        with pytest.raises(DecodeError):
            peek_open(broken, CODEC)

    def test_another_writer_schema_falls_back_to_a_full_decode(self) -> None:
        """A writer schema whose layout the walk does not follow (here: an extra record
        field before phase) is read by a full decode and still peeks right."""
        older = copy.deepcopy(CURRENT)
        extra = {"name": "extra", "type": {"type": "record", "name": "Extra", "fields": [{"name": "n", "type": "int"}]}}
        older["fields"].insert(1, extra)
        codec = Codec()
        writer = codec.schemas.add_writer("JobState", older, label="test")
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=77)
        record = state_to_record(state) | {"extra": {"n": 5}}
        value = _encode_with(writer, record)
        assert peek(value, codec) == (Phase.ACTIVE, 77)

    def test_each_codec_reads_a_framing_with_its_own_schema(self) -> None:
        """Registry id 7 is the current layout in one registry and one with another
        long before ``next_action_at_ms`` in another (both walked): each codec's values
        peek right, and a peek bound to a codec (``open_peeker``, the restore's) does not
        keep it alive."""
        longer = copy.deepcopy(CURRENT)
        names = [f["name"] for f in longer["fields"]]
        longer["fields"].insert(names.index("next_action_at_ms"), {"name": "extra", "type": "long"})
        current, other = Codec(registry=FixedRegistry(CURRENT)), Codec(registry=FixedRegistry(longer))
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=77)
        plain = current.encode("JobState", state_to_record(state), topic="export.jobs")
        extended = _encode_with(other.writer("JobState", plain), state_to_record(state) | {"extra": 12345})
        extended = plain[:5] + extended[10:]  # the same registry framing, the other layout
        for _ in range(2):
            assert peek_open(plain, current) == (Phase.ACTIVE, 77, "v", "RUNNING")
            assert open_peeker(other)(extended) == (Phase.ACTIVE, 77, "v", "RUNNING")
        gone = weakref.ref(other)
        del other
        gc.collect()
        assert gone() is None

    def test_an_empty_value_is_a_decode_error(self) -> None:
        for reader in (peek, peek_open, peek_body):
            with pytest.raises(DecodeError):
                reader(b"", CODEC)

    def test_a_value_cut_short_is_a_decode_error(self) -> None:
        """A truncated value falls back to the full decode, which refuses it."""
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2)
        value = CODEC.encode("JobState", state_to_record(state))
        with pytest.raises(DecodeError):
            peek(value[:20], CODEC)

    @pytest.mark.parametrize("value", [b"\x00", b"\xc3\x01" + bytes(8) + b"xx", b"garbage", b"\xc3"])
    def test_garbage_is_a_decode_error(self, value: bytes) -> None:
        """Bytes that are not a JobState raise DecodeError, never something else."""
        with pytest.raises(DecodeError):
            peek(value, CODEC)

    def test_a_record_of_another_schema_is_a_decode_error(self) -> None:
        """A FileReady on export.jobs is not a state."""
        record = {
            "request_id": "r", "vendor": "v", "vendor_job_id": "j", "url": "u", "expires_at": None,
            "format": "csv", "size_bytes": None, "sha256": None, "produced_at": 1, "tenant": "t",
            "connection": "c", "correlation_id": None, "reannounced": False,
        }  # fmt: skip
        with pytest.raises(DecodeError):
            peek(CODEC.encode("FileReady", record), CODEC)


def _encode_with(writer: SchemaInfo, record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + writer.fingerprint)
    fastavro.schemaless_writer(buf, writer.parsed, record)
    return buf.getvalue()
