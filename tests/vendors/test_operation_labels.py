"""Metric labels stay a fixed set: every operation name an adapter reports is one it
declares (``operations``), none carries a page or chunk number, and more pages or
chunks add no new label. The runtime files anything undeclared under "other"."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.vendors.conftest import token_connection
from worker.engine.model import PollAnswered
from worker.ingest import jsonable
from worker.observability import Metrics
from worker.result_store import FileResultStore
from worker.runtime.connections import OTHER_OPERATION, build_connections
from worker.simulators import available, module, simulator_class
from worker.simulators.base import Simulator, Timing
from worker.testing import eventually
from worker.vendors import Cancellable, HttpClient, JobSpec, adapter_class, build_adapter, operations_of

# A label set that grows with the data (pages, chunks, ids) has digits in it.
NUMBERED = re.compile(r"\d")
# Enough for every call an adapter makes; a set much larger than this is not "fixed".
MAX_OPERATIONS = 16


class Recorder:
    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, connection: str, operation: str, seconds: float, outcome: str) -> None:
        self.operations.append(operation)


def paging_options(vendor: str) -> dict[str, Any]:
    """Options that make an adapter page and chunk as much as it can (small pages)."""
    if vendor == "opengate":
        return {"max_entities": 2, "operations_page_size": 2, "search_page_size": 1, "search_max_pages": 50}
    return {}


def job_for(vendor: str, entities: int) -> dict[str, Any]:
    job: dict[str, Any] = jsonable(module(vendor).sample_job())
    target = job.get("target")
    if isinstance(target, dict) and "entities" in target:
        target["entities"] = [f"meter-{i:04d}" for i in range(entities)]
    return job


async def lifecycle(
    vendor: str, sim: Simulator, session: HttpClient, tmp_path: Path, *, entities: int
) -> tuple[set[str], Any]:
    """Every kind of call the adapter makes: token, submit (chunked), polls to the end
    (collecting in pages), a 401 refresh, reconcile (paged), cancel."""
    recorder = Recorder()
    conn = token_connection(vendor, sim.base_url, options=paging_options(vendor))
    adapter: Any = build_adapter(
        vendor, conn, session, observe=recorder, result_store=FileResultStore(tmp_path / f"r{entities}")
    )
    # A request id no filter accepts: lookups page through listings.
    spec = JobSpec(f"labels/{entities}+x", "acme", vendor, job_for(vendor, entities))
    job_id = (await adapter.submit(spec)).vendor_job_id

    async def finished() -> PollAnswered | None:
        answer: PollAnswered = await adapter.poll(spec, job_id)
        return answer if answer.status.terminal else None

    await eventually(finished, timeout=10, what="a terminal status")
    sim.faults.plan.update({"next_401": 1})
    await adapter.poll(spec, job_id)
    if adapter.can_reconcile:
        await adapter.reconcile(spec)
    if isinstance(adapter, Cancellable):
        other = JobSpec(f"labels-cancel-{entities}", "acme", vendor, job_for(vendor, 1))
        await adapter.cancel(other, (await adapter.submit(other)).vendor_job_id)
    return set(recorder.operations), adapter


@pytest.fixture(params=available())
async def sim(request: Any) -> AsyncIterator[Simulator]:
    simulator = simulator_class(request.param)(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=9)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


class TestOperationLabels:
    def test_every_adapter_declares_a_small_fixed_set(self) -> None:
        for vendor in available():
            declared = operations_of(vendor)
            assert isinstance(getattr(adapter_class(vendor), "operations", None), frozenset), vendor
            assert 0 < len(declared) <= MAX_OPERATIONS, vendor
            assert [op for op in declared if NUMBERED.search(op)] == [], vendor
            assert OTHER_OPERATION not in declared, vendor

    async def test_the_labels_used_are_declared_and_do_not_grow_with_pages(
        self, sim: Simulator, session: HttpClient, tmp_path: Path
    ) -> None:
        vendor = sim.vendor
        few, adapter = await lifecycle(vendor, sim, session, tmp_path, entities=3)
        many, _ = await lifecycle(vendor, sim, session, tmp_path, entities=9)
        assert few <= adapter.operations and many <= adapter.operations
        assert [op for op in few | many if NUMBERED.search(op)] == []
        assert many == few  # more chunks and pages: the same labels
        assert {"submit", "poll"} <= few

    async def test_opengate_chunks_and_pages_are_one_label_each(self, session: HttpClient, tmp_path: Path) -> None:
        """The calls that used to carry numbers ("append 2/4", "collect page 3")."""
        if "opengate" not in available():
            pytest.skip("no OpenGate in this build")
        og: Any = simulator_class("opengate")(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=9)
        await og.start()
        try:
            og.listing_gone = False
            labels, _ = await lifecycle("opengate", og, session, tmp_path, entities=9)
            og.listing_gone = True  # results from the history search instead, also in pages
            history, _ = await lifecycle("opengate", og, session, tmp_path, entities=7)
        finally:
            await og.stop()
        assert {"append", "activate", "collect", "reconcile", "cancel"} <= labels
        assert "history" in history


class TestTheRuntimeKeepsLabelsBounded:
    async def test_an_undeclared_operation_is_counted_as_other(self, session: HttpClient, tmp_path: Path) -> None:
        vendor = available()[0]
        metrics = Metrics()
        conn = module(vendor).demo_connection("http://127.0.0.1:9")
        connections = build_connections(
            {"c": conn}, session, metrics, result_store=FileResultStore(tmp_path / "results")
        )
        observe = connections["c"].adapter.http._observe  # type: ignore[attr-defined]
        observe("c", "poll", 0.01, "ok")
        observe("c", "collect page 7", 0.01, "ok")
        observe("c", "append 3/9", 0.01, "ok")
        text = metrics.render().decode()
        operations = set(re.findall(r'export_worker_vendor_calls_total\{[^}]*operation="([^"]*)"', text))
        assert operations == {"poll", OTHER_OPERATION}
