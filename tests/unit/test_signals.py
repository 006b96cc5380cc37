"""A shutdown stuck inside a blocking call ends the process anyway, saying where it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from worker.signals import EXIT_SHUTDOWN_STUCK

PROGRAM = textwrap.dedent(
    """
    import asyncio, os, signal, threading, time
    import worker.signals as signals

    signals.SHUTDOWN_OVERRUN_S = {overrun}

    def closing_the_client_blocks_for_good():
        threading.Event().wait()

    def the_loop_blocks(seconds):
        time.sleep(seconds)

    async def main(how):
        deadline = signals.ShutdownDeadline(grace_s=0.1)
        stop = signals.stop_on_signals(deadline.on_signal)
        deadline.watch(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        if how == "stuck":
            await asyncio.get_running_loop().run_in_executor(None, closing_the_client_blocks_for_good)
        elif how == "loop blocked":
            the_loop_blocks(30)  # the deadline's timer thread is never started

    asyncio.run(main({how!r}))
    """
)


def run(how: str, overrun: float) -> subprocess.CompletedProcess[str]:
    code = PROGRAM.format(how=how, overrun=overrun)
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_a_shutdown_stuck_in_a_blocking_call_exits_with_every_threads_stack() -> None:
    done = run("stuck", overrun=0.2)
    assert done.returncode == EXIT_SHUTDOWN_STUCK, done.stderr[-2000:]
    assert "shutdown did not end in time" in done.stdout + done.stderr
    assert "closing_the_client_blocks_for_good" in done.stderr  # where it was stuck


def test_a_loop_blocked_since_the_signal_still_exits_with_its_stack() -> None:
    # Only faulthandler's C thread, armed in the signal handler itself, can act here;
    # without it the process would end the 30 s sleep and then exit with 3.
    done = run("loop blocked", overrun=0.2)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the_loop_blocks" in done.stderr


def test_a_shutdown_that_ends_in_time_exits_normally_at_once() -> None:
    done = run("in time", overrun=30.0)  # the timer thread is a daemon: it holds nothing up
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shutdown did not end in time" not in done.stdout + done.stderr
