"""TIME and P:O arguments, and checkpoint files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from worker.ops.checkpoint import Checkpoint
from worker.ops.errors import CheckpointError, UsageError
from worker.ops.kafkaio import Span
from worker.ops.timeparse import format_ms, parse_position, parse_time

NOW = int(dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)


class TestTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("-24h", NOW - 86_400_000),
            ("-30m", NOW - 1_800_000),
            ("-7d", NOW - 7 * 86_400_000),
            ("-90s", NOW - 90_000),
            ("-1w", NOW - 7 * 86_400_000),
            ("now", NOW),
            ("2026-03-01", int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)),
            ("2026-03-01T10:30Z", int(dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC).timestamp() * 1000)),
            ("2026-03-01T12:30:00+02:00", int(dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC).timestamp() * 1000)),
            ("@1767225600000", 1767225600000),
        ],
    )
    def test_accepted_forms(self, text: str, expected: int) -> None:
        assert parse_time(text, now_ms=NOW) == expected

    @pytest.mark.parametrize("text", ["yesterday", "24h", "-24x", "", "2026-13-01"])
    def test_anything_else_is_a_usage_error_naming_the_forms(self, text: str) -> None:
        with pytest.raises(UsageError, match="ISO 8601"):
            parse_time(text, now_ms=NOW, flag="--from")

    def test_format_is_utc_iso(self) -> None:
        assert format_ms(NOW) == "2026-03-05T12:00:00Z"
        assert format_ms(None) == ""


class TestPosition:
    def test_partition_and_offset(self) -> None:
        assert parse_position("2:1500") == (2, 1500)

    @pytest.mark.parametrize("text", ["2", "a:1", "1:-3", "1:x", ":5"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(UsageError, match="PARTITION:OFFSET"):
            parse_position(text)


class TestCheckpoint:
    def _saved(self, path: Path) -> Checkpoint:
        cp = Checkpoint(path, "replay", {"from": "-24h", "vendor": "itron"}, "export.requests", [Span(0, 5, 9)])
        cp.done[0] = 6
        cp.save(NOW)
        return cp

    def test_round_trip_resumes_after_the_last_offset(self, tmp_path: Path) -> None:
        self._saved(tmp_path / "cp.json")
        loaded = Checkpoint.load(tmp_path / "cp.json")
        assert loaded is not None
        loaded.check("replay", {"from": "-24h", "vendor": "itron", "tenant": None})
        assert loaded.remaining() == [Span(0, 7, 9)]

    def test_other_arguments_are_refused_naming_the_difference(self, tmp_path: Path) -> None:
        self._saved(tmp_path / "cp.json")
        loaded = Checkpoint.load(tmp_path / "cp.json")
        assert loaded is not None
        with pytest.raises(CheckpointError, match="vendor: 'itron' then, 'opengate' now"):
            loaded.check("replay", {"from": "-24h", "vendor": "opengate"})
        with pytest.raises(CheckpointError, match="belongs to `replay`"):
            loaded.check("dlq replay", {"from": "-24h", "vendor": "itron"})

    def test_missing_file_is_a_fresh_start(self, tmp_path: Path) -> None:
        assert Checkpoint.load(tmp_path / "none.json") is None

    @pytest.mark.parametrize("content", ["{not json", '{"version": 99}', '{"version": 1}', "[]"])
    def test_unreadable_file_is_refused(self, tmp_path: Path, content: str) -> None:
        (tmp_path / "cp.json").write_text(content)
        with pytest.raises(CheckpointError, match="not a valid checkpoint"):
            Checkpoint.load(tmp_path / "cp.json")
