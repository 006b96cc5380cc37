"""Configured vendor connections: each one's adapter and timing policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.config import ConnectionConfig, ConnectionsFile, Settings, policy_for
from worker.engine.policy import Policy
from worker.errors import ConfigError, RateLimited
from worker.observability import Metrics
from worker.tracing import Tracing
from worker.vendors import Cancellable, HttpClient, HttpLimits, VendorAdapter, build_adapter, operations_of

# The operation label of a call an adapter did not declare (keeps the label set bounded).
OTHER_OPERATION = "other"

# The policy for a job whose connection is no longer configured (it fails, clearly).
FALLBACK_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Connection:
    """A configured vendor connection with its adapter and timing policy. Its limits and
    queues belong to the ``CallDispatcher``."""

    name: str
    config: ConnectionConfig
    adapter: VendorAdapter
    policy: Policy


def build_connections(
    configs: dict[str, ConnectionConfig],
    client: HttpClient,
    metrics: Metrics,
    *,
    defaults: Policy | None = None,
    result_store: Any = None,
    limits: HttpLimits | None = None,
    tracing: Tracing | None = None,
) -> dict[str, Connection]:
    """The adapters and policies of ``configs``. ``limits`` bound every vendor answer
    (``HttpLimits.from_settings``; the defaults when omitted)."""
    out: dict[str, Connection] = {}
    for name, conf in configs.items():
        known = operations_of(conf.vendor)

        def observe(
            connection: str,
            operation: str,
            seconds: float,
            outcome: str,
            vendor: str = conf.vendor,
            known: frozenset[str] = known,
        ) -> None:
            # Labels stay a fixed set: an operation the adapter did not declare is "other".
            if operation not in known:
                operation = OTHER_OPERATION
            metrics.child(metrics.vendor_latency, vendor, operation).observe(seconds)
            metrics.child(metrics.vendor_calls, vendor, connection, operation, outcome).inc()
            if outcome == RateLimited.code:
                metrics.rate_limited.labels(vendor, connection).inc()

        adapter = build_adapter(
            name, conf, client, observe=observe, limits=limits, tracing=tracing, result_store=result_store
        )
        policy = policy_for(
            conf,
            can_reconcile=bool(getattr(adapter, "can_reconcile", False)),
            can_cancel=isinstance(adapter, Cancellable),
            defaults=defaults or Policy(),
        )
        out[name] = Connection(name, conf, adapter, policy)
    return out


def load_connection_configs(settings: Settings) -> dict[str, ConnectionConfig]:
    if settings.connections_file is None:
        raise ConfigError("no connections file: set EXPORT_WORKER_CONNECTIONS_FILE")
    return ConnectionsFile.load(settings.connections_file).connections
