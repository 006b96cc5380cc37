"""How a JSON log line is written: orjson for what it writes as the standard library
would, the standard library for what orjson refuses, the timestamp's form, and the
``status`` line's direct writer against structlog's pipeline."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from structlog.testing import capture_logs

from tests.log_capture import json_lines
from worker.observability import add_timestamp, call_context, configure_logging, log_status, render_json


def rendered(**fields: Any) -> dict[str, Any]:
    line = render_json(None, "info", fields)
    assert "\n" not in line  # one line, whatever the values hold
    parsed: dict[str, Any] = json.loads(line)
    return parsed


class Colour(StrEnum):
    RED = "red"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


class TestRenderJson:
    def test_plain_values_read_back_as_they_were(self) -> None:
        fields = {"event": "status", "request_id": "t-1", "sequence": 3, "ratio": 0.5, "error": None, "ok": True}
        assert rendered(**fields) == fields

    def test_nested_values_and_texts_beyond_ascii(self) -> None:
        fields = {"labels": {"batch": "mars", "vendor": "Itrón ✓"}, "ids": ["a", "b"], "line\nbreak": "tab\there"}
        assert rendered(**fields) == fields

    def test_control_characters_are_escaped_not_written(self) -> None:
        line = render_json(None, "info", {"text": "before\x1b[2Jafter\r\nnext"})
        assert "\x1b" not in line and "\r" not in line and "\n" not in line
        assert json.loads(line)["text"] == "before\x1b[2Jafter\r\nnext"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (2**70, 2**70),  # beyond 64 bits: orjson refuses it
            ({1: "one"}, {"1": "one"}),  # a key that is not a text
            ("lone \udc80 surrogate", "lone \udc80 surrogate"),  # not UTF-8
        ],
    )
    def test_what_orjson_refuses_the_standard_library_writes(self, value: object, expected: object) -> None:
        assert rendered(event="x", value=value)["value"] == expected

    def test_a_dataclass_is_written_as_its_repr_and_its_hidden_fields_stay_hidden(self) -> None:
        value = rendered(event="x", credentials=Credentials("demo", "hunter2"))["credentials"]
        assert value == repr(Credentials("demo", "hunter2")) and "hunter2" not in value

    def test_other_objects_are_written_as_their_repr_or_structlog_form(self) -> None:
        class Custom:
            def __structlog__(self) -> str:
                return "custom form"

        when = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        out = rendered(event="x", when=when, raw=b"bytes", custom=Custom(), colour=Colour.RED)
        assert out["when"] == repr(when) and out["raw"] == repr(b"bytes")
        assert out["custom"] == "custom form" and out["colour"] == "red"

    def test_agrees_with_the_standard_library_on_what_both_write(self) -> None:
        fields = {"event": "status", "n": -(2**63), "f": 1e-7, "s": "é\u2028", "l": [1, [2, {"k": None}]]}
        assert json.loads(render_json(None, "info", dict(fields))) == json.loads(json.dumps(fields))


class TestTimestamp:
    def test_iso_utc_with_microseconds_and_the_time_it_was_written(self) -> None:
        before = time.time()
        stamp = add_timestamp(None, "info", {})["timestamp"]
        after = time.time()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        assert before - 1e-6 <= when <= after + 1e-6

    def test_stamps_follow_the_clock_across_seconds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The second's text is kept between lines: it must change with the second."""
        second = 1_796_598_000_000_000_000  # 2026-12-06T23:00:00Z in nanoseconds
        clock = iter([second - 500, second + 1_000, second + 500_000_000, second - 1_750_000_000])
        monkeypatch.setattr(time, "time_ns", lambda: next(clock))
        stamps = [add_timestamp(None, "info", {})["timestamp"] for _ in range(4)]
        assert stamps == [
            "2026-12-06T22:59:59.999999Z",
            "2026-12-06T23:00:00.000001Z",
            "2026-12-06T23:00:00.500000Z",
            "2026-12-06T22:59:58.250000Z",  # a clock set back is followed too
        ]


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    with json_lines(monkeypatch) as buffer:
        yield buffer


def written(buffer: io.StringIO) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in buffer.getvalue().splitlines()]
    buffer.seek(0)
    buffer.truncate()
    return rows


def both_ways(buffer: io.StringIO, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The line ``log_status`` writes and the one structlog writes for the same fields,
    without their timestamps (key order kept)."""
    log_status(dict(fields))
    structlog.get_logger("export_worker").info("status", **fields)
    direct, through_structlog = written(buffer)
    for row in (direct, through_structlog):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", row.pop("timestamp"))
    return direct, through_structlog


STATUS = {
    "request_id": "t-1",
    "vendor": "itron",
    "connection": "itron-eu",
    "vendor_job_id": None,
    "status": "SUBMITTED",
    "previous": "ACCEPTED",
    "sequence": 2,
    "error": None,
}


class TestStatusLine:
    """The ``status`` line is written without structlog's generic path when lines are
    JSON: it must be the line structlog writes, field for field and in the same order."""

    def test_the_same_line_as_structlog_writes(self, stderr: io.StringIO) -> None:
        direct, through_structlog = both_ways(stderr, STATUS)
        assert list(direct.items()) == list(through_structlog.items())
        assert direct == {**STATUS, "event": "status", "level": "info"}

    def test_hostile_texts_are_redacted_the_same_way(self, stderr: io.StringIO) -> None:
        fields = {
            **STATUS,
            "request_id": "r token=abc123secret",
            "vendor_job_id": "Bearer abcdefghijkl",
            "status": "FAILED",
            "error": 'rejected: {"client_secret": "hunter2"} at https://x/f.zip?sig=s1g&se=1',
        }
        direct, through_structlog = both_ways(stderr, fields)
        assert list(direct.items()) == list(through_structlog.items())
        line = json.dumps(direct)
        assert "abc123secret" not in line and "abcdefghijkl" not in line
        assert "hunter2" not in line and "s1g" not in line

    async def test_inside_a_call_and_a_span_the_same_context_is_added(self, stderr: io.StringIO) -> None:
        async def in_a_call() -> tuple[dict[str, Any], dict[str, Any]]:
            call_context.set({"request_id": "other", "tenant_hint": "acme"})
            tracer = TracerProvider().get_tracer("test")
            with tracer.start_as_current_span("call") as span:
                direct, through_structlog = both_ways(stderr, STATUS)
                assert direct["trace_id"] == f"{span.get_span_context().trace_id:032x}"
            return direct, through_structlog

        direct, through_structlog = await asyncio.create_task(in_a_call())
        assert list(direct.items()) == list(through_structlog.items())
        assert direct["request_id"] == "t-1" and direct["tenant_hint"] == "acme"  # the line's own fields win

    def test_nothing_is_written_above_info(self, stderr: io.StringIO) -> None:
        configure_logging("warning", "json")
        log_status(dict(STATUS))
        assert written(stderr) == []

    def test_a_level_set_on_structlog_afterwards_is_followed(self, stderr: io.StringIO) -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        log_status(dict(STATUS))
        assert written(stderr) == []

    def test_a_reconfigured_structlog_gets_the_line(self, stderr: io.StringIO) -> None:
        with capture_logs() as captured:
            log_status(dict(STATUS))
        assert captured == [{**STATUS, "event": "status", "log_level": "info"}]
        assert written(stderr) == []
