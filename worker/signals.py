"""How long-running commands (``run``, ``simulate``, ``console``, ``demo --keep-running``)
learn that they should stop, and what happens when stopping itself gets stuck."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

import structlog

log = structlog.get_logger("export_worker")

# Exit status of a process whose graceful shutdown did not end in time.
EXIT_SHUTDOWN_STUCK = 3
# Past the shutdown grace (the drain), for the last commit and closing the clients. The
# grace plus this stays below the deployment's terminationGracePeriodSeconds (25 + 10 < 40).
SHUTDOWN_OVERRUN_S = 10.0
# After that, if even the deadline's own thread could not run (the GIL held by a thread
# stuck in C), faulthandler's C thread dumps the stacks and exits (status 1).
BACKSTOP_S = 3.0


def stop_on_signals(on_signal: Callable[[], None] | None = None) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; call it inside the running loop.

    ``on_signal`` runs in the signal handler itself, before the loop gets to the event
    (also when the loop is blocked); it must not take locks."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        if on_signal is not None:
            on_signal()
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


class ShutdownDeadline:
    """Once a stop is asked for, the shutdown gets ``grace_s`` plus ``SHUTDOWN_OVERRUN_S``;
    past that, every thread's stack goes to stderr and the process exits with
    ``EXIT_SHUTDOWN_STUCK``.

    A call blocked inside a client library (librdkafka, RocksDB) cannot be cancelled, and
    a normal exit joins its thread: without this the process would wait for the
    orchestrator's SIGKILL and leave nothing saying where it stopped.

        deadline = ShutdownDeadline(settings.shutdown_grace_s)
        stop = stop_on_signals(deadline.on_signal)
        deadline.watch(stop)
    """

    def __init__(self, grace_s: float) -> None:
        self.seconds = grace_s + SHUTDOWN_OVERRUN_S
        self._armed = False

    def on_signal(self) -> None:
        """In the signal handler: faulthandler's watchdog, a C thread that needs neither
        the GIL nor the loop (arming it takes no Python lock)."""
        if not self._armed:
            self._armed = True
            faulthandler.dump_traceback_later(self.seconds + BACKSTOP_S, exit=True)

    def watch(self, stop: asyncio.Event) -> asyncio.Task[None]:
        """Once ``stop`` is set: a timer thread that logs why, dumps the stacks and exits."""

        async def arm() -> None:
            await stop.wait()
            self.on_signal()  # a stop that came another way than a signal
            timer = threading.Timer(self.seconds, _give_up, args=(self.seconds,))
            timer.daemon = True
            timer.start()

        return asyncio.create_task(arm())


def _give_up(seconds: float) -> None:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    log.error("shutdown did not end in time: exiting without it; thread stacks above on stderr", seconds=seconds)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_SHUTDOWN_STUCK)
