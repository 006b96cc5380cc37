"""Exclusive job kinds: the home partition of each (connection, kind), and the gate that
lets one job of a kind at the vendor at a time, in request order (pure; no broker)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.runtime_fakes import POLICY, FakeAdapter, accepted
from worker.config import ConnectionConfig
from worker.engine.model import JobState, Phase
from worker.exclusive import exclusive_kind, exclusive_kind_of, home_partition
from worker.runtime.connections import Connection
from worker.runtime.exclusive_gate import ExclusiveGate
from worker.runtime.partitions import Partitions


def ep(name: str = "ep", **overrides: Any) -> Connection:
    config = ConnectionConfig(vendor="elasticpath", base_url="http://127.0.0.1:9", client_id="c", **overrides)
    return Connection(name, config, FakeAdapter(), POLICY)  # type: ignore[arg-type]


class Rig:
    def __init__(self, conn: Connection | None = None) -> None:
        self.conn = conn or ep()
        self.gate = ExclusiveGate({self.conn.name: self.conn})
        self.partitions = Partitions("requests")
        self.partitions.claim({3})
        self.part = self.partitions[3]

    def job(self, request_id: str, job_type: str, phase: Phase = Phase.PENDING, at: int = 1_000) -> JobState:
        state = accepted(request_id, at, conn=self.conn.name).evolve(
            vendor="elasticpath", job_json=json.dumps({"job_type": job_type}), phase=phase, requested_at_ms=at
        )
        self.part.jobs[request_id] = state
        return state

    def start(self, request_id: str) -> None:
        self.part.jobs[request_id] = self.part.jobs[request_id].evolve(phase=Phase.SUBMITTING)

    def end(self, request_id: str) -> str | None:
        before = self.part.jobs[request_id]
        self.part.jobs[request_id] = before.evolve(phase=Phase.DONE)
        return self.gate.ended(self.part, request_id, before)


class TestGate:
    def test_one_billing_run_at_a_time_and_the_next_goes_when_it_ends(self) -> None:
        rig = Rig()
        rig.job("b1", "BILLING_RUN")
        rig.job("b2", "BILLING_RUN", at=2_000)
        assert rig.gate.admit(rig.part, "b1")
        rig.start("b1")
        assert not rig.gate.admit(rig.part, "b2")
        assert rig.gate.waiting() == 1
        assert rig.end("b1") == "b2"
        assert rig.gate.admit(rig.part, "b2") and rig.gate.waiting() == 0

    def test_kinds_do_not_wait_for_each_other_and_tax_runs_never_wait(self) -> None:
        rig = Rig()
        for rid, kind in (("b", "BILLING_RUN"), ("p", "PAYMENT_RUN"), ("t1", "TAX_RUN"), ("t2", "TAX_RUN")):
            rig.job(rid, kind)
            assert rig.gate.admit(rig.part, rid)
            rig.start(rid)

    def test_waiting_jobs_go_in_request_order(self) -> None:
        rig = Rig()
        rig.job("running", "PAYMENT_RUN", Phase.ACTIVE)
        for rid, at in (("late", 30), ("early", 10), ("middle", 20)):
            rig.job(rid, "PAYMENT_RUN", at=at)
            assert not rig.gate.admit(rig.part, rid)
        order = []
        holder = "running"
        while (holder := rig.end(holder)) is not None:
            order.append(holder)
            assert rig.gate.admit(rig.part, holder)
            rig.start(holder)
        assert order == ["early", "middle", "late"]

    def test_a_restored_job_at_the_vendor_holds_its_kind(self) -> None:
        """Nothing is persisted: after a takeover the holder is read from the states."""
        rig = Rig()
        rig.job("at-vendor", "BILLING_RUN", Phase.ACTIVE)
        rig.job("queued", "BILLING_RUN")
        assert not rig.gate.admit(rig.part, "queued")

    def test_a_job_admitted_on_a_later_look_no_longer_counts_as_waiting(self) -> None:
        rig = Rig()
        rig.job("b1", "BILLING_RUN", Phase.ACTIVE)
        rig.job("b2", "BILLING_RUN")
        assert not rig.gate.admit(rig.part, "b2") and rig.gate.waiting() == 1
        del rig.part.jobs["b1"]  # ended unseen; b2's next look finds the kind free
        assert rig.gate.admit(rig.part, "b2") and rig.gate.waiting() == 0

    def test_a_holder_that_ended_unseen_holds_nothing(self) -> None:
        rig = Rig()
        rig.job("b1", "BILLING_RUN")
        assert rig.gate.admit(rig.part, "b1")
        rig.start("b1")
        del rig.part.jobs["b1"]  # evicted without the gate being told
        rig.job("b2", "BILLING_RUN")
        assert rig.gate.admit(rig.part, "b2")

    def test_a_connection_without_exclusive_kinds_never_waits(self) -> None:
        rig = Rig(ep(exclusive_kinds=[]))
        for rid in ("b1", "b2"):
            rig.job(rid, "BILLING_RUN")
            assert rig.gate.admit(rig.part, rid)
            rig.start(rid)

    def test_a_forgotten_partition_leaves_nothing_behind(self) -> None:
        rig = Rig()
        rig.job("b1", "BILLING_RUN", Phase.ACTIVE)
        rig.job("b2", "BILLING_RUN")
        assert not rig.gate.admit(rig.part, "b2")
        rig.gate.forget({3})
        assert rig.gate.waiting() == 0


class TestRouting:
    def test_the_kinds_of_elastic_path(self) -> None:
        assert exclusive_kind("elasticpath", None, {"job_type": "billing-run"}) == "BILLING_RUN"
        assert exclusive_kind("elasticpath", None, {"job_type": "TAX_RUN"}) is None
        assert exclusive_kind("elasticpath", ["TAX_RUN"], {"job_type": "TAX_RUN"}) == "TAX_RUN"
        assert exclusive_kind("itron", None, {"job_type": "BILLING_RUN"}) is None

    def test_the_kind_of_a_body(self) -> None:
        assert exclusive_kind_of("elasticpath", None, '{"job_type": "PAYMENT_RUN"}') == "PAYMENT_RUN"
        for body in ("not json", "[1, 2]", '"BILLING_RUN"', "{}"):
            assert exclusive_kind_of("elasticpath", None, body) is None
        assert exclusive_kind_of("itron", None, '{"job_type": "BILLING_RUN"}') is None

    @given(st.text(min_size=1, max_size=40), st.sampled_from(["BILLING_RUN", "PAYMENT_RUN"]), st.integers(1, 64))
    def test_every_worker_finds_the_same_home_within_the_topic(self, connection: str, kind: str, n: int) -> None:
        home = home_partition(connection, kind, n)
        assert 0 <= home < n and home == home_partition(connection, kind, n)

    def test_a_connection_may_declare_only_its_vendors_kinds(self) -> None:
        with pytest.raises(ValueError, match="not elasticpath job kinds"):
            ep(exclusive_kinds=["REFUND_RUN"])
        with pytest.raises(ValueError, match="known: none"):
            ConnectionConfig(vendor="itron", base_url="http://127.0.0.1:9", exclusive_kinds=["X"])
