"""Every operator command explains itself, and every failure is one line, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer

from tests.ops.conftest import cli
from worker.cli import app
from worker.config import Settings
from worker.kafka import admin_client, ensure_topics


def command_paths() -> list[list[str]]:
    """Every leaf command, e.g. ["jobs", "show"]."""
    out: list[list[str]] = []

    def walk(group: object, path: list[str]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                walk(command, [*path, name])
            else:
                out.append([*path, name])

    walk(typer.main.get_command(app), [])
    return out


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


class TestHelp:
    def test_the_operator_commands_exist(self) -> None:
        paths = {" ".join(p) for p in command_paths()}
        expected = {
            "jobs list",
            "jobs show",
            "replay",
            "dlq list",
            "dlq replay",
            "pause",
            "resume",
            "paused",
            "budgets",
        }
        assert expected <= paths

    @pytest.mark.parametrize("path", command_paths(), ids=" ".join)
    async def test_every_command_help_has_an_example(self, settings: Settings, path: list[str]) -> None:
        result = await cli(settings, *path, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.stdout


OPERATOR_CALLS = [
    ["jobs", "list"],
    ["jobs", "show", "some-request"],
    ["replay", "--from", "-1h", "--dry-run"],
    ["dlq", "list"],
    ["dlq", "replay", "--dry-run"],
    ["pause", "itron"],
    ["paused"],
]


class TestErrors:
    @pytest.mark.parametrize("args", OPERATOR_CALLS, ids=" ".join)
    async def test_unreachable_broker_is_one_line_and_exit_1(self, settings: Settings, args: list[str]) -> None:
        port = closed_port()
        result = await cli(settings, *args, EXPORT_WORKER_KAFKA_BOOTSTRAP=port)
        assert result.exit_code == 1
        line = one_line_error(result.stderr)
        assert f"cannot reach Kafka at {port}" in line and "Connection refused" in line

    @pytest.mark.parametrize("args", OPERATOR_CALLS, ids=" ".join)
    async def test_missing_topic_is_one_line_and_exit_1(self, settings: Settings, args: list[str]) -> None:
        """The test's topics were never created."""
        result = await cli(settings, *args)
        assert result.exit_code == 1
        assert "does not exist" in one_line_error(result.stderr)

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["replay", "--from", "yesterday"], "ISO 8601"),
            (["replay"], "--from TIME"),
            (["replay", "--from", "-1h", "--from-offset", "0:1"], "not both"),
            (["replay", "--from-offset", "zero"], "PARTITION:OFFSET"),
            (["replay", "--from", "-1h", "--tag", "x"], "--force"),
            (["jobs", "list", "--status", "DONE"], "unknown DONE"),
            (["jobs", "list", "--output", "xml"], "'xml' is not one of"),
            (["dlq", "list", "--since", "last week"], "ISO 8601"),
            (["jobs", "list", "--no-such-flag"], "No such option"),
            (["pause", "acme", "--vendor"], "unknown vendor"),
        ],
    )
    async def test_bad_flag_is_one_line_and_exit_2(self, settings: Settings, args: list[str], says: str) -> None:
        await ensure_topics(settings, admin_client(settings))
        result = await cli(settings, *args)
        assert result.exit_code == 2, result.output
        assert says in one_line_error(result.stderr)

    async def test_unreadable_checkpoint_is_one_line(self, settings: Settings, tmp_path: Path) -> None:
        await ensure_topics(settings, admin_client(settings))
        (tmp_path / "cp.json").write_text("{half a checkpoint")
        result = await cli(settings, "replay", "--from", "-1h", "--checkpoint", str(tmp_path / "cp.json"))
        assert result.exit_code == 1
        assert "not a valid checkpoint" in one_line_error(result.stderr)

    async def test_checkpoint_that_is_a_folder_is_one_line(self, settings: Settings, tmp_path: Path) -> None:
        await ensure_topics(settings, admin_client(settings))
        result = await cli(settings, "dlq", "replay", "--checkpoint", str(tmp_path))
        assert result.exit_code == 1
        assert "cannot read checkpoint" in one_line_error(result.stderr)

    async def test_unknown_request_is_one_line(self, settings: Settings) -> None:
        await ensure_topics(settings, admin_client(settings))
        result = await cli(settings, "jobs", "show", "never-sent")
        assert result.exit_code == 1
        assert "no request 'never-sent'" in one_line_error(result.stderr)
