"""How a JSON log line is written: orjson for what it writes as the standard library
would, the standard library for what orjson refuses, and the timestamp's form."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest

from worker.observability import add_timestamp, render_json


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
