"""Records built for the codec write the same bytes as fastavro's own choice of union
branch: ``worker.records`` names the record branch of a ``["null", record]`` union
instead of leaving fastavro to find it by validating the dict against each branch."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_store_peek import LONG, TEXT, optional, states
from worker.codec import Codec
from worker.engine.model import ErrorInfo, JobState, PublishStatus, Status
from worker.records import state_from_record, state_to_record, status_record

CODEC = Codec()


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each (name, fields) union pair as the bare fields dict."""
    return {k: v[1] if isinstance(v, tuple) else v for k, v in record.items()}


class TestStateRecords:
    @given(states)
    def test_the_named_branches_write_the_same_bytes(self, state: JobState) -> None:
        record = state_to_record(state)
        assert CODEC.encode("JobState", record) == CODEC.encode("JobState", plain(record))

    @given(states)
    def test_the_previous_schema_version_leaves_the_trace_out(self, state: JobState) -> None:
        previous = CODEC.schemas.previous["JobState"]
        record = state_to_record(state)
        written = CODEC.encode("JobState", record, writer=previous)
        assert written == CODEC.encode("JobState", plain(record), writer=previous)
        assert state_from_record(CODEC.decode("JobState", written)).trace is None

    @given(states)
    def test_a_state_reads_back_as_it_was_written(self, state: JobState) -> None:
        assert state_from_record(CODEC.decode("JobState", CODEC.encode("JobState", state_to_record(state)))) == state


# occurred_at is a timestamp-millis: the decoder reads it as a datetime (years 1-9999).
EPOCH_MS = st.integers(0, 253_402_300_799_999)
errors = optional(st.builds(ErrorInfo, code=TEXT, message=TEXT, retryable=st.booleans()))


class TestStatusRecords:
    @given(states, st.sampled_from(Status), errors, LONG, EPOCH_MS)
    def test_the_named_error_branch_writes_the_same_bytes(
        self, state: JobState, status: Status, error: ErrorInfo | None, sequence: int, at_ms: int
    ) -> None:
        effect = PublishStatus(
            status=status,
            previous_status=None,
            vendor_status=None,
            sequence=sequence,
            occurred_at_ms=at_ms,
            error=error,
        )
        record = status_record(state, effect)
        written = CODEC.encode("JobStatusChanged", record)
        assert written == CODEC.encode("JobStatusChanged", plain(record))
        decoded = CODEC.decode("JobStatusChanged", written)
        assert decoded["error"] == (
            None if error is None else {"code": error.code, "message": error.message, "retryable": error.retryable}
        )
