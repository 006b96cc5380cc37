"""Artifact keys: one file name per request id, short enough for any file system."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.result_store import MAX_ARTIFACT_NAME_BYTES, artifact_key


def test_a_short_id_stays_readable() -> None:
    assert artifact_key("opengate", "req-1", ".jsonl") == "opengate/req-1.jsonl"
    assert artifact_key("elasticpath", "r~20260101", ".json") == "elasticpath/r~20260101.json"


def test_separators_never_leave_the_folder() -> None:
    assert artifact_key("elasticpath", "../../etc/passwd", ".json") == "elasticpath/..%2F..%2Fetc%2Fpasswd.json"


@given(st.text(min_size=1, max_size=256))
def test_every_id_gets_one_name_of_bounded_length(request_id: str) -> None:
    key = artifact_key("elasticpath", request_id, ".json")
    folder, name = key.split("/")
    assert folder == "elasticpath" and len(name.encode()) <= MAX_ARTIFACT_NAME_BYTES
    assert name not in ("", ".", "..")


@given(st.text(min_size=100, max_size=256), st.text(min_size=100, max_size=256))
def test_long_ids_that_share_a_beginning_stay_apart(a: str, b: str) -> None:
    if a != b:
        assert artifact_key("x", "p" * 200 + a, ".json") != artifact_key("x", "p" * 200 + b, ".json")
