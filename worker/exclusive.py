"""Exclusive job kinds: kinds a vendor runs one at a time per account (Elastic Path: one
billing run and one payment run per store). Pure, no I/O.

The engine routes them instead of taking a lock: every request of one exclusive kind of
one connection is handled in one *home* partition of ``export.requests`` (a request that
arrives in another partition is forwarded there, in the transaction that reads it). The
worker that owns the home partition sees every such job and starts them one after the
other, in request order; a crash or a rebalance hands the partition, and with it the
queue and the job running at the vendor, to the next owner, as any partition. There is
no lease to expire and no clock to trust.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from worker.ops.partitioner import partition_for

# What a connection of each vendor runs one at a time unless it says otherwise.
DEFAULT_EXCLUSIVE_KINDS: dict[str, frozenset[str]] = {"elasticpath": frozenset({"BILLING_RUN", "PAYMENT_RUN"})}
# The kinds each vendor's jobs come in (a connection may only declare these).
JOB_KINDS: dict[str, frozenset[str]] = {"elasticpath": frozenset({"BILLING_RUN", "TAX_RUN", "PAYMENT_RUN"})}


def job_kind(vendor: str, job: Mapping[str, Any]) -> str | None:
    """The kind of a request's job (its adapter's notion), None when its vendor has none."""
    if vendor != "elasticpath":
        return None
    raw = job.get("job_type")
    return str(raw).strip().upper().replace("-", "_") if isinstance(raw, str) else None


def exclusive_kinds(vendor: str, declared: Collection[str] | None) -> frozenset[str]:
    return frozenset(declared) if declared is not None else DEFAULT_EXCLUSIVE_KINDS.get(vendor, frozenset())


def exclusive_kind(vendor: str, declared: Collection[str] | None, job: Mapping[str, Any]) -> str | None:
    """The job's kind when its connection runs that kind one at a time, else None."""
    kind = job_kind(vendor, job)
    return kind if kind is not None and kind in exclusive_kinds(vendor, declared) else None


def exclusive_kind_of(vendor: str, declared: Collection[str] | None, job_json: str) -> str | None:
    """``exclusive_kind`` of a job's JSON body (a connection's vendor and declared kinds);
    None when the connection has none, or the body says none or is not a JSON object."""
    if not exclusive_kinds(vendor, declared):
        return None  # most connections: no body to parse
    try:
        job = json.loads(job_json)
    except ValueError:
        return None
    return exclusive_kind(vendor, declared, job) if isinstance(job, dict) else None


def home_partition(connection: str, kind: str, partitions: int) -> int:
    """The partition of ``export.requests`` where every job of this kind of this
    connection is handled."""
    return partition_for(f"{connection}/{kind}".encode(), partitions)
