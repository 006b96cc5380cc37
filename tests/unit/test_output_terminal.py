"""When a test or bench counts a job as ended: its last status terminal, and a succeeded
job's FileReady read as well (the reader can see the status of a transaction first)."""

from __future__ import annotations

from worker.output_reader import Output
from worker.testing import finished, terminal


def output(statuses: dict[str, list[str]], files: tuple[str, ...] = ()) -> Output:
    out = Output()
    for request_id, seen in statuses.items():
        out.status.extend({"request_id": request_id, "status": status} for status in seen)
    out.files.extend({"request_id": request_id} for request_id in files)
    return out


def test_a_succeeded_job_ends_once_its_file_is_read() -> None:
    before = output({"a": ["ACCEPTED", "SUBMITTED", "SUCCEEDED"]})
    after = output({"a": ["ACCEPTED", "SUBMITTED", "SUCCEEDED"]}, files=("a",))
    assert finished(before, ["a"]) == set() and not terminal(before, ["a"])
    assert finished(after, ["a"]) == {"a"} and terminal(after, ["a"])


def test_other_terminal_statuses_need_no_file() -> None:
    out = output({"f": ["ACCEPTED", "FAILED"], "r": ["REJECTED"], "x": ["SUCCEEDED", "EXPIRED"], "c": ["CANCELLED"]})
    assert terminal(out, ["f", "r", "x", "c"])


def test_open_and_unknown_jobs_have_not_ended() -> None:
    out = output({"s": ["ACCEPTED", "SUBMITTED"], "done": ["FAILED"]})
    assert finished(out, ["s", "done", "never-seen"]) == {"done"}
    assert not terminal(out, ["s", "done"])


def test_only_the_statuses_asked_for_count() -> None:
    out = output({"f": ["FAILED"], "ok": ["SUCCEEDED"]}, files=("ok",))
    assert finished(out, ["f", "ok"], frozenset({"SUCCEEDED"})) == {"ok"}
    assert not terminal(out, ["f", "ok"], frozenset({"SUCCEEDED"}))


def test_another_jobs_file_does_not_count() -> None:
    out = output({"a": ["SUCCEEDED"], "b": ["SUCCEEDED"]}, files=("b",))
    assert finished(out, ["a", "b"]) == {"b"}
