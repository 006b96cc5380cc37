"""The Dockerfile and .dockerignore, read statically (no Docker engine here); the
HEALTHCHECK command is run for real against the worker's side port."""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
from pathlib import PurePosixPath

from tests.deploy.support import (
    DOCKERFILE,
    check_settings_env,
    dockerignore_rules,
    healthcheck_command,
    in_build_context,
    parse_cli,
    parse_image,
    read_dockerfile,
    side_port_paths,
)
from worker.config import Settings
from worker.observability import Metrics, SidePort


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


class TestStages:
    def test_is_multi_stage_with_pinned_bases(self) -> None:
        """At least a builder and a runtime stage, each FROM a version-tagged image."""
        dockerfile = read_dockerfile()
        assert len(dockerfile.stages) >= 2
        for stage in dockerfile.stages:
            ref = parse_image(stage.image)
            assert ref.pinned, f"FROM {stage.image} is not pinned to a version"
            assert ref.tag is None or any(c.isdigit() for c in ref.tag), f"{stage.image}: tag without a version"

    def test_runtime_copies_only_the_venv_from_the_builder(self) -> None:
        """The runtime stage takes the virtualenv from the builder, not the sources."""
        final = read_dockerfile().final
        copies = final.all("COPY")
        assert copies, "the runtime stage copies nothing"
        assert all(c.startswith("--from=") for c in copies), copies

    def test_no_dev_extra_installed(self) -> None:
        """Test tools (the dev extra) never reach the image."""
        text = DOCKERFILE.read_text()
        assert ".[dev]" not in text and "[dev]" not in text
        assert "sys.exit" in text and "'dev' in x" in text  # the EXTRAS guard


class TestRuntime:
    def test_runs_as_numeric_non_root_user(self) -> None:
        """USER is a numeric uid:gid other than 0 (Kubernetes runAsNonRoot can check it)."""
        user = read_dockerfile().final.last("USER")
        assert user is not None
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0

    def test_entrypoint_runs_the_worker(self) -> None:
        """ENTRYPOINT + CMD, in exec form, make `export-worker run`, a real CLI command."""
        import json

        final = read_dockerfile().final
        entrypoint = json.loads(final.last("ENTRYPOINT") or "null")
        cmd = json.loads(final.last("CMD") or "null")
        assert entrypoint == ["export-worker"]
        assert parse_cli(cmd).command == "run"

    def test_exposes_the_side_port(self) -> None:
        """EXPOSE names the side port the image configures (and Settings defaults to)."""
        dockerfile = read_dockerfile()
        port = dockerfile.env(dockerfile.final).get(
            "EXPORT_WORKER_HTTP_PORT", str(Settings.model_fields["http_port"].default)
        )
        assert port in (dockerfile.final.last("EXPOSE") or "").split()

    def test_env_names_are_settings(self) -> None:
        """Every EXPORT_WORKER_* ENV is a Settings field and takes effect."""
        dockerfile = read_dockerfile()
        env = {k: v for k, v in dockerfile.env(dockerfile.final).items() if k.startswith("EXPORT_WORKER_")}
        assert env, "the image sets no EXPORT_WORKER_* defaults"
        assert check_settings_env(env) == []

    def test_result_store_is_under_a_folder_the_user_owns(self) -> None:
        """The default file:// result store is a folder created and chowned to the runtime user."""
        dockerfile = read_dockerfile()
        url = dockerfile.env(dockerfile.final)["EXPORT_WORKER_RESULT_STORE_URL"]
        assert url.startswith("file:///")
        folder = url.removeprefix("file://")
        runs = " ".join(dockerfile.final.all("RUN"))
        uid = (dockerfile.final.last("USER") or "").split(":")[0]
        assert f"mkdir -p {folder}" in runs
        assert f"chown -R {uid}:" in runs

    def test_state_dir_is_a_folder_the_user_owns(self) -> None:
        """EXPORT_WORKER_STATE_DIR is an absolute folder that a RUN creates (``mkdir -p``
        of it or of a folder inside it) and then chowns recursively to the runtime user:
        the root file system is read-only, and a volume mounted there takes its owner."""
        dockerfile = read_dockerfile()
        state_dir = PurePosixPath(dockerfile.env(dockerfile.final)["EXPORT_WORKER_STATE_DIR"])
        assert state_dir.is_absolute()
        user = dockerfile.final.last("USER") or ""
        created_then_owned = False
        for run in dockerfile.final.all("RUN"):
            steps = [shlex.split(step) for step in run.split("&&")]
            made = [
                i
                for i, s in enumerate(steps)
                if s[:2] == ["mkdir", "-p"] and any(PurePosixPath(p).is_relative_to(state_dir) for p in s[2:])
            ]
            owned = [
                i
                for i, s in enumerate(steps)
                if s[:3] == ["chown", "-R", user] and any(state_dir.is_relative_to(p) for p in s[3:])
            ]
            created_then_owned |= bool(made and owned and made[0] < owned[-1])
        assert created_then_owned

    def test_stop_signal_is_the_one_the_worker_traps(self) -> None:
        """STOPSIGNAL is SIGTERM, which `export-worker run` handles gracefully."""
        assert read_dockerfile().final.last("STOPSIGNAL") == "SIGTERM"


class TestHealthcheck:
    def test_probes_a_side_port_path(self) -> None:
        """The HEALTHCHECK asks /healthz, a path the side port serves, with a timeout."""
        options, argv = healthcheck_command(read_dockerfile().final.last("HEALTHCHECK") or "")
        assert "timeout" in options and "interval" in options
        assert "/healthz" in " ".join(argv)
        assert "/healthz" in side_port_paths()
        assert argv[0] == "python", "slim images have no curl: the check must use python"

    async def test_passes_against_a_live_side_port_and_fails_without_one(self) -> None:
        """Run the HEALTHCHECK command for real: exit 0 while /healthz answers, non-zero when nothing listens."""
        _, argv = healthcheck_command(read_dockerfile().final.last("HEALTHCHECK") or "")
        argv = [sys.executable, *argv[1:]]
        side = SidePort(Metrics(), lambda: (True, ""))
        port = await side.start("127.0.0.1", 0)
        try:
            assert await _run(argv, {"EXPORT_WORKER_HTTP_PORT": str(port)}) == 0
        finally:
            await side.stop()
        assert await _run(argv, {"EXPORT_WORKER_HTTP_PORT": str(_free_port())}) != 0

    async def test_fails_when_the_worker_loop_is_stuck(self) -> None:
        """A live process whose loop stalled answers /healthz with 503: the check fails, so
        the container is restarted and its partitions move."""
        _, argv = healthcheck_command(read_dockerfile().final.last("HEALTHCHECK") or "")
        argv = [sys.executable, *argv[1:]]
        side = SidePort(Metrics(), lambda: (True, ""), lambda: (False, "worker loop stalled for 130 s"))
        port = await side.start("127.0.0.1", 0)
        try:
            assert await _run(argv, {"EXPORT_WORKER_HTTP_PORT": str(port)}) != 0
        finally:
            await side.stop()


class TestDockerignore:
    def test_build_inputs_are_in_the_context(self) -> None:
        """Everything the Dockerfile COPYs from the context (and hatchling's readme) is sent."""
        sources = []
        for stage in read_dockerfile().stages:
            for args in stage.all("COPY"):
                if not args.startswith("--from="):
                    sources += args.split()[:-1]
        assert sources, "no COPY from the build context"
        for src in [*sources, "README.md", "worker/cli.py", "schemas/ExportRequested.avsc"]:
            assert in_build_context(src.rstrip("/")), f"{src} is excluded by .dockerignore"

    def test_local_state_stays_out(self) -> None:
        """The venv, git, tests, caches and deploy files are not sent to the daemon."""
        for path in (
            ".venv/bin/python",
            ".git/HEAD",
            "tests/conftest.py",
            "worker/__pycache__/cli.cpython-311.pyc",
            ".demo/results/x.csv",
            "deploy/base/kustomization.yaml",
            ".env",
        ):
            assert not in_build_context(path), f"{path} would be sent to the build"

    def test_rules_are_an_allow_list(self) -> None:
        """The file starts by excluding everything, so new files stay out by default."""
        rules = dockerignore_rules()
        assert rules[0] == (True, "*")
