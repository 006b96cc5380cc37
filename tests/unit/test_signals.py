"""A shutdown stuck inside a blocking call ends the process anyway, saying where it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from worker.signals import EXIT_SHUTDOWN_STUCK

PROGRAM = textwrap.dedent(
    """
    import asyncio, threading
    import worker.signals as signals

    signals.SHUTDOWN_OVERRUN_S = 0.2

    def closing_the_client_blocks_for_good():
        threading.Event().wait()

    async def main(stuck):
        stop = asyncio.Event()
        signals.exit_if_shutdown_overruns(stop, grace_s=0.1)
        stop.set()
        if stuck:
            await asyncio.get_running_loop().run_in_executor(None, closing_the_client_blocks_for_good)
        else:
            await asyncio.sleep(0)  # the shutdown ends well in time

    asyncio.run(main({stuck}))
    """
)


def run(stuck: bool) -> subprocess.CompletedProcess[str]:
    code = PROGRAM.replace("{stuck}", str(stuck))
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_a_shutdown_stuck_in_a_blocking_call_exits_with_every_threads_stack() -> None:
    done = run(stuck=True)
    assert done.returncode == EXIT_SHUTDOWN_STUCK, done.stderr[-2000:]
    assert "shutdown did not end in time" in done.stdout + done.stderr
    assert "closing_the_client_blocks_for_good" in done.stderr  # where it was stuck


def test_a_shutdown_that_ends_in_time_exits_normally() -> None:
    done = run(stuck=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shutdown did not end in time" not in done.stdout + done.stderr
