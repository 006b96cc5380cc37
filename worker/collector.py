"""The worker's settings for CPython's cyclic garbage collector.

Most of a worker's garbage is freed by reference counting the moment it is dropped; the
cyclic collector is for what refers to itself. With CPython's defaults (a young
collection every 700 new container objects, a full one every 100 of those) a busy worker
ran a young collection every few requests and a full one, walking every job it holds,
every few hundred; with tracing on (spans, their attributes, events and links) twice as
often. ``bench/throughput.py``: at 6,000 requests the collector took 2.4 s of a traced
worker's CPU with the defaults and 0.6 s with these, and 1.0 s against 0.03 s untraced.

What is loaded by the time the worker is built (modules, classes, settings) lives as
long as the process: frozen, full collections no longer walk it. The thresholds count
container objects, not bytes: cyclic garbage waits a little longer than with the
defaults, but never longer than a bounded number of allocations.
"""

from __future__ import annotations

import gc

# Young collection every 10,000 new container objects; the middle one every 10 of
# those, a full one every 10 middle ones (CPython's full-collection heuristic still
# skips it until the survivors grew by a quarter).
THRESHOLDS = (10_000, 10, 10)


def tune_collector() -> None:
    """Call once, after start-up, before the work begins."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
