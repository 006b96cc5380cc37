"""The state store bench writes its million records by splicing values into one encoded
template (``bench.store.Template``): each spliced value must decode to the state it names."""

from __future__ import annotations

from bench.store import States
from worker.codec import Codec
from worker.engine.model import Phase
from worker.records import state_from_record
from worker.store.peek import open_header, read_open_header

CODEC = Codec()
NOW_MS = 1_764_900_000_000


def test_spliced_finished_and_open_states_decode_to_what_they_name_and_carry_their_header() -> None:
    states = States(CODEC, 6, NOW_MS)
    for i in (0, 5, 123_456):
        _, partition, value, head = states.finished(i)
        finished = state_from_record(CODEC.decode("JobState", value))
        assert head == open_header(finished) and read_open_header(head) is not None
        assert finished.request_id == f"store-done-{i:07d}" and finished.origin_partition == partition
        assert finished.phase is Phase.DONE and finished.file is not None
        assert finished.file.url == f"https://dpss.example.test/files/{finished.vendor_job_id}/export.csv"
        assert finished.file.expires_at_ms == finished.next_action_at_ms > NOW_MS
        _, partition, value, head = states.opened(i)
        opened = state_from_record(CODEC.decode("JobState", value))
        assert head == open_header(opened)
        assert opened.request_id == States.open_id(i) and opened.origin_partition == partition
        assert opened.phase is Phase.ACTIVE and opened.next_action_at_ms > NOW_MS
