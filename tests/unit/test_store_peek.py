"""The fast peek of phase and next_action_at_ms agrees with a full decode."""

from __future__ import annotations

import copy
import gc
import importlib
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
from worker.limits import STATE_HEADERS_BOUND
from worker.records import state_to_record
from worker.store import peek
from worker.store.peek import (
    OPEN_HEADER,
    Peeked,
    open_header,
    open_peek_header,
    open_peeker,
    peek_body,
    peek_open,
    read_open_header,
)

# The module (``worker.store.peek`` is also the name of a function the package exports).
peek_module = importlib.import_module("worker.store.peek")

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


def unwalked_layout() -> tuple[Codec, JobState, bytes]:
    """A codec that knows a writer layout the walk does not follow (an extra record
    field before phase), a state, and its value in that layout (due at 77)."""
    older = copy.deepcopy(CURRENT)
    extra = {"name": "extra", "type": {"type": "record", "name": "Extra", "fields": [{"name": "n", "type": "int"}]}}
    older["fields"].insert(1, extra)
    codec = Codec()
    writer = codec.schemas.add_writer("JobState", older, label="test")
    state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=77)
    return codec, state, _encode_with(writer, state_to_record(state) | {"extra": {"n": 5}})


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
        codec, _state, value = unwalked_layout()
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


HEADER_FIXED = bytes((1, 2)) + (1_700_000_000_000).to_bytes(8, "big", signed=True)


class TestOpenHeader:
    """The open peek carried in a record header (``OPEN_HEADER``)."""

    @settings(max_examples=300, deadline=None)
    @given(states)
    def test_a_state_header_says_what_the_walk_reads(self, state: JobState) -> None:
        """For any state: its header reads back as the open peek of its value, or there
        is none because a text is longer than a length byte holds."""
        head = open_header(state)
        walked = peek_open(CODEC.encode("JobState", state_to_record(state)), CODEC)
        if head is None:
            assert len(state.vendor.encode()) > 255
        else:
            assert read_open_header(head) == walked

    def test_the_largest_header_is_within_its_bound(self) -> None:
        """Ingest counts ``STATE_HEADERS_BOUND`` into a state record's size."""
        state = JobState("r", "t", "c", "v" * 255, "{}", 1, 0, 5, Phase.ACTIVE, Status.CANCELLED, 3, 1, 2)
        head = open_header(state)
        assert head is not None and open_header(state.evolve(vendor="v" * 256)) is None
        assert len(OPEN_HEADER) + len(head) + 255 - len(Status.CANCELLED.value) <= STATE_HEADERS_BOUND

    def test_a_phase_version_1_has_no_byte_for_goes_without_a_header(self) -> None:
        """A phase added later is walked, never a crash of the transaction writing it."""
        assert open_peek_header("LATER", 1, "v", "s") is None  # type: ignore[arg-type]
        assert open_peek_header(Phase.DONE, 1, "v", "s") is not None

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_read_as_a_header_or_as_none(self, head: bytes) -> None:
        """Never an exception: a header is whole and well-formed, or it is not used."""
        found = read_open_header(head)
        if found is not None:
            phase, due, vendor, status = found
            assert isinstance(phase, Phase) and isinstance(due, int)
            assert len(head) == 12 + len(vendor.encode()) + len(status.encode())

    @pytest.mark.parametrize(
        "head",
        [
            bytes((2, 2)) + HEADER_FIXED[2:] + b"\x01v\x01s",  # another version
            HEADER_FIXED[:7],  # cut in its fixed part
            bytes((1, 4)) + HEADER_FIXED[2:] + b"\x01v\x01s",  # no such phase
            HEADER_FIXED + b"\x05v\x01s",  # a vendor longer than what follows
            HEADER_FIXED + b"\x01v\x01s!",  # bytes after the status
            HEADER_FIXED + b"\x01\xff\x01s",  # a vendor that is not UTF-8
            HEADER_FIXED + b"\x01v",  # no status
        ],
    )
    def test_a_malformed_header_is_none(self, head: bytes) -> None:
        assert read_open_header(head) is None
        assert read_open_header(HEADER_FIXED + b"\x01v\x01s") == (Phase.ACTIVE, 1_700_000_000_000, "v", "s")

    def test_header_texts_are_remembered_within_a_bound(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The texts of headers are kept for the next header with the same pair, but
        headers come from the topic: past the bound a pair is read and not kept, and
        reads the same; a malformed pair is never kept."""
        monkeypatch.setattr(peek_module, "_header_texts", {})
        monkeypatch.setattr(peek_module, "_HEADER_TEXTS_CACHED", 3)
        heads = [HEADER_FIXED + bytes((2,)) + f"v{i}".encode() + b"\x01s" for i in range(5)]
        assert [read_open_header(head) for head in heads] == [
            (Phase.ACTIVE, 1_700_000_000_000, f"v{i}", "s") for i in range(5)
        ]
        assert read_open_header(HEADER_FIXED + b"\x01v\x01s!") is None
        assert len(peek_module._header_texts) == 3
        assert read_open_header(heads[4]) == (Phase.ACTIVE, 1_700_000_000_000, "v4", "s")
        assert read_open_header(bytes((1, 3)) + HEADER_FIXED[2:] + heads[0][10:]) == (
            Phase.DONE,
            1_700_000_000_000,
            "v0",
            "s",
        )

    def test_the_restore_peek_believes_a_header_instead_of_walking(self) -> None:
        """Given a well-formed header the bound open peek returns it (here it disagrees
        with the value, to tell the two apart); a malformed one, or none, is walked."""
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=9)
        value = CODEC.encode("JobState", state_to_record(state))
        peek_value = open_peeker(CODEC)
        head = open_header(state.evolve(next_action_at_ms=42))
        assert peek_value(value, head) == (Phase.ACTIVE, 42, "v", "RUNNING")
        assert peek_value(value, b"\x02junk") == peek_value(value) == (Phase.ACTIVE, 9, "v", "RUNNING")
        assert peek(value, CODEC) == (Phase.ACTIVE, 9)  # the other peeks take no header

    def test_a_header_does_not_spare_fetching_an_unknown_registry_schema(self) -> None:
        """A value of a registry id the codec has not fetched is refused as unknown even
        with a header: its job is decoded later, which needs the schema (the restore
        fetches it and folds again)."""
        codec = Codec(registry=FixedRegistry(CURRENT))
        state = JobState("r", "t", "c", "v", "{}", 1, 0, 5, Phase.ACTIVE, Status.RUNNING, 3, 1, 2, next_action_at_ms=9)
        value = codec.encode("JobState", state_to_record(state), topic="export.jobs")
        unknown = value[:1] + (8).to_bytes(4, "big") + value[5:]
        with pytest.raises(DecodeError) as refused:
            open_peeker(codec)(unknown, open_header(state))
        assert refused.value.reason_code == "unknown_schema"

    def test_a_layout_the_walk_does_not_follow_is_decoded_whatever_its_header_says(self) -> None:
        codec, state, value = unwalked_layout()
        head = open_header(state.evolve(next_action_at_ms=42))
        assert open_peeker(codec)(value, head) == (Phase.ACTIVE, 77, "v", "RUNNING")
