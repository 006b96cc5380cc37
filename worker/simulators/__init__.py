"""Vendor simulators: aiohttp servers that speak each vendor's protocol, with faults.

Each simulator module provides:
  * ``<Vendor>Simulator(*, timing=, faults=, seed=)`` (a ``base.Simulator``),
  * ``demo_connection(base_url) -> ConnectionConfig`` with the simulator's credentials,
  * ``sample_job() -> (record name, job dict)`` a valid job for the demo and tests.
"""

from __future__ import annotations

import importlib
from typing import Any

from worker.vendor_registry import REGISTRY

# vendor name -> (simulator module, simulator class)
SIMULATORS: dict[str, tuple[str, str]] = {v.name: (v.simulator_module, v.simulator_class) for v in REGISTRY}


def available() -> list[str]:
    """Vendors whose simulator is present in this build."""
    found = []
    for vendor, (module, _) in SIMULATORS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        found.append(vendor)
    return found


def module(vendor: str) -> Any:
    return importlib.import_module(SIMULATORS[vendor][0])


def simulator_class(vendor: str) -> Any:
    return getattr(module(vendor), SIMULATORS[vendor][1])
