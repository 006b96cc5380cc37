"""Every vendor the worker knows, in one place.

One record per vendor: its name (a connection's ``vendor``), the Avro record of its job
in ExportRequested's ``job`` union, its adapter and its simulator. The config's vendor
type, ingest's job-to-vendor table and the adapter and simulator lookups are all derived
from this table. The adapter and simulator are named, not imported: this module imports
nothing, so the config and the operator CLI can use it without loading aiohttp or the
vendor modules (and a build without simulators still knows its vendors).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str  # a connection's ``vendor``
    job_record: str  # short name of its job record in ExportRequested's ``job`` union
    adapter_module: str  # holds the adapter class and ``validate``
    adapter_class: str
    simulator_module: str
    simulator_class: str


REGISTRY: tuple[Vendor, ...] = (
    Vendor(
        "itron", "ItronBatchRequest",
        "worker.vendors.itron", "ItronAdapter",
        "worker.simulators.itron", "ItronSimulator",
    ),
    Vendor(
        "opengate", "OpenGateJob",
        "worker.vendors.opengate", "OpenGateAdapter",
        "worker.simulators.opengate", "OpenGateSimulator",
    ),
    Vendor(
        "elasticpath", "ElasticPathJob",
        "worker.vendors.elasticpath", "ElasticPathAdapter",
        "worker.simulators.elasticpath", "ElasticPathSimulator",
    ),
    Vendor(
        "unicommerce", "UnicommerceExport",
        "worker.vendors.unicommerce", "UnicommerceAdapter",
        "worker.simulators.unicommerce", "UnicommerceSimulator",
    ),
)  # fmt: skip

VENDORS: tuple[str, ...] = tuple(v.name for v in REGISTRY)
BY_NAME: dict[str, Vendor] = {v.name: v for v in REGISTRY}
# short job record name -> vendor name
JOB_VENDORS: dict[str, str] = {v.job_record: v.name for v in REGISTRY}
