"""Every way this repository starts a worker keeps its stores in that run's own folder,
never in the repository root or wherever the process happens to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import WORKDIR, bench_settings
from tests.conftest import make_settings
from tests.fleet import RigConfig, rig_settings
from worker.config import TopicSettings
from worker.demo import demo_settings


class TestStateDirs:
    def test_test_workers_keep_their_stores_in_the_tests_temp_dir(self, tmp_path: Path) -> None:
        """make_settings, which builds every test worker's settings."""
        settings = make_settings("127.0.0.1:1", TopicSettings(), tmp_path)
        assert settings.state_dir == tmp_path / "state"

    def test_the_bench_keeps_its_stores_in_its_work_dir(self) -> None:
        """bench_settings: under .bench, as an absolute path (spawned workers get it too)."""
        state_dir = bench_settings("127.0.0.1:1", "x").state_dir
        assert state_dir.is_absolute() and state_dir.is_relative_to(WORKDIR.resolve())

    def test_the_chaos_fleet_keeps_its_stores_in_its_work_dir(self, tmp_path: Path) -> None:
        """rig_settings: one folder per run under the rig's workdir."""
        state_dir = rig_settings(RigConfig(workdir=tmp_path), "127.0.0.1:1", "r1").state_dir
        assert state_dir == tmp_path.resolve() / "state-r1"

    def test_the_demo_keeps_its_stores_in_its_work_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """demo_settings: under .demo, next to its results, not in the current directory."""
        monkeypatch.chdir(tmp_path)
        state_dir = demo_settings("127.0.0.1:1", TopicSettings(), Path(".demo")).state_dir
        assert state_dir == tmp_path.resolve() / ".demo" / "state"
