"""Vendor adapters, one module each, registered by vendor name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from worker.config import ConnectionConfig
from worker.errors import ConfigError
from worker.tracing import Tracing
from worker.vendor_registry import REGISTRY
from worker.vendors.base import Cancellable, JobSpec, VendorAdapter
from worker.vendors.http import HttpLimits, Observer, VendorHttp, vendor_session
from worker.vendors.transport import HttpClient

__all__ = [
    "Cancellable",
    "HttpClient",
    "HttpLimits",
    "JobSpec",
    "VendorAdapter",
    "adapter_class",
    "build_adapter",
    "operations_of",
    "validator",
    "vendor_session",
]

# vendor name -> (module under worker.vendors holding the adapter and `validate`, adapter class)
MODULES: dict[str, tuple[str, str]] = {v.name: (v.adapter_module, v.adapter_class) for v in REGISTRY}

Validator = Callable[[dict[str, Any], int, ConnectionConfig], None]


def _module(vendor: str) -> Any:
    try:
        module_name, _ = MODULES[vendor]
    except KeyError:
        raise ConfigError(f"unknown vendor {vendor!r}") from None
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"vendor {vendor!r} is not available in this build") from None
        raise


def adapter_class(vendor: str) -> type[Any]:
    return getattr(_module(vendor), MODULES[vendor][1])  # type: ignore[no-any-return]


def validator(vendor: str) -> Validator:
    return _module(vendor).validate  # type: ignore[no-any-return]


def build_adapter(
    name: str,
    conn: ConnectionConfig,
    client: HttpClient,
    *,
    observe: Observer | None = None,
    limits: HttpLimits | None = None,
    tracing: Tracing | None = None,
    **extras: Any,
) -> VendorAdapter:
    """Create the adapter for connection ``name``; ``extras`` go to adapters that take them
    (e.g. ``result_store`` for vendors whose result the worker collects). ``limits``
    bound its vendor's answers (the defaults when omitted)."""
    http = VendorHttp(
        client,
        connection=name,
        base_url=conn.base_url,
        timeout_s=conn.timeout_s,
        observe=observe,
        limits=limits,
        tracing=tracing,
    )
    cls = adapter_class(conn.vendor)
    accepted = getattr(cls, "extras", ())
    return cls(conn, http, **{k: v for k, v in extras.items() if k in accepted})  # type: ignore[no-any-return]


def operations_of(vendor: str) -> frozenset[str]:
    """The fixed set of operation names the vendor's adapter reports to metrics."""
    return frozenset(getattr(adapter_class(vendor), "operations", frozenset()))
