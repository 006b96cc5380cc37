"""How long-running commands (``run``, ``simulate``, ``console``, ``demo --keep-running``)
learn that they should stop, and what happens when stopping itself gets stuck."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading

import structlog

log = structlog.get_logger("export_worker")

# Exit status of a process whose graceful shutdown did not end in time.
EXIT_SHUTDOWN_STUCK = 3
# Past the shutdown grace (the drain), for the last commit and closing the clients. The
# grace plus this stays below the deployment's terminationGracePeriodSeconds (25 + 10 < 40).
SHUTDOWN_OVERRUN_S = 10.0


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; call it inside the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def exit_if_shutdown_overruns(stop: asyncio.Event, grace_s: float) -> asyncio.Task[None]:
    """Once ``stop`` is set, give the shutdown ``grace_s`` plus ``SHUTDOWN_OVERRUN_S``;
    past that, write every thread's stack to stderr and exit with ``EXIT_SHUTDOWN_STUCK``.

    A call blocked inside a client library (librdkafka, RocksDB) cannot be cancelled,
    and a normal exit joins its thread: without this the process would wait for the
    orchestrator's SIGKILL and leave nothing saying where it stopped. The timer runs on a
    thread of its own, so it fires even when the event loop itself is blocked."""

    async def arm() -> None:
        await stop.wait()
        seconds = grace_s + SHUTDOWN_OVERRUN_S
        timer = threading.Timer(seconds, _give_up, args=(seconds,))
        timer.daemon = True
        timer.start()

    return asyncio.create_task(arm())


def _give_up(seconds: float) -> None:
    log.error("shutdown did not end in time: exiting without it; thread stacks follow on stderr", seconds=seconds)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_SHUTDOWN_STUCK)
