"""Give freed heap memory back to the operating system (glibc only).

A worker's memory should follow its open jobs. Two glibc habits get in the way:

* every thread that allocates (librdkafka's, RocksDB's, asyncio's executor) may get a
  malloc arena of its own, up to 8 per core, and memory freed in one is reused only by
  that arena;
* memory freed after a burst (a backlog read at once, a large transaction encoded,
  a restore) stays mapped in the process.

So a worker limits itself to ``ARENAS`` arenas at start, unless the operator chose with
``MALLOC_ARENA_MAX``, and calls ``malloc_trim(0)`` every ``EXPORT_WORKER_MEMORY_TRIM_S``
seconds in a thread (ctypes releases the GIL; the event loop does not wait for it).
Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only; musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); False when not glibc or
    when ``MALLOC_ARENA_MAX`` already says how many."""
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return free heap pages to the OS; True when glibc released any."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


def resident_bytes() -> int:
    """This process's resident set (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
