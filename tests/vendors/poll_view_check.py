"""A post-acceptance call made twice, once with the request's full job body and once
with only its ``poll_view``, and compared: what the vendor (the simulator) received and
what the adapter answered must be the same (docs/design/state-store.md §3.6)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from worker.errors import VendorError
from worker.simulators.base import Simulator
from worker.vendors import JobSpec, VendorAdapter

Call = Callable[[JobSpec], Awaitable[Any]]


def as_stored(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` after the trip through the state record's ``job_json`` (compact JSON and
    back), as the runtime hands it to the adapter."""
    loaded: dict[str, Any] = json.loads(json.dumps(job, separators=(",", ":"), sort_keys=True))
    return loaded


def trimmed(spec: JobSpec, view: dict[str, Any]) -> JobSpec:
    return replace(spec, job=as_stored(view))


def received(request: dict[str, Any]) -> dict[str, Any]:
    """A request as the simulator logged it, without its arrival time."""
    return {key: value for key, value in request.items() if key != "at"}


def outcome_of(error: Exception) -> tuple[Any, ...]:
    """An exception as something to compare: its type, words and how it is handled."""
    if isinstance(error, VendorError):
        return (type(error), error.message, error.status, error.retriable, error.outcome_unknown)
    return (type(error), str(error))


@dataclass(frozen=True, slots=True)
class Seen:
    requests: list[dict[str, Any]]
    outcome: Any


async def observe(sim: Simulator, call: Call, spec: JobSpec) -> Seen:
    first = len(sim.requests)
    try:
        outcome: Any = await call(spec)
    except Exception as exc:
        outcome = outcome_of(exc)
    return Seen([received(r) for r in sim.requests[first:]], outcome)


async def same_with_view(
    sim: Simulator, adapter: VendorAdapter, spec: JobSpec, call: Call, *, view: dict[str, Any] | None = None
) -> Any:
    """Make ``call`` with ``spec`` and then with ``spec`` trimmed to ``view`` (the adapter's
    ``poll_view`` unless given); assert both sent the same requests and got the same
    answer (or error), and return that answer."""
    full = await observe(sim, call, spec)
    kept = adapter.poll_view(spec.job) if view is None else view
    with_view = await observe(sim, call, trimmed(spec, kept))
    assert full.requests, "the call made no request: nothing was compared"
    assert with_view.requests == full.requests
    assert with_view.outcome == full.outcome
    return full.outcome
