"""The simulators' account quota (``FaultPlan.account_rate_per_s``): one token bucket for
every client of a simulator, as a vendor counts one account; calls beyond it get 429 with
the whole seconds until the next allowed call as Retry-After."""

from __future__ import annotations

import aiohttp
import pytest

from worker.simulators.faults import AccountQuota, FaultPlan
from worker.simulators.itron import API, ItronSimulator


class TestAccountQuota:
    def test_a_second_holds_its_rate_and_the_rest_is_refused_with_a_wait(self) -> None:
        quota = AccountQuota()
        answers = [quota.take(10.0, 100.0) for _ in range(12)]
        assert answers[:10] == [None] * 10 and answers[10:] == [1, 1]
        assert quota.take(10.0, 100.125) is None  # an eighth of a second later: one more
        assert (quota.calls, quota.refused) == (13, 2)

    def test_a_slow_quota_asks_for_a_longer_wait(self) -> None:
        quota = AccountQuota()
        assert quota.take(0.25, 0.0) is None
        assert quota.take(0.25, 0.0) == 4

    def test_no_quota_lets_everything_through_uncounted(self) -> None:
        quota = AccountQuota()
        assert all(quota.take(0.0, 0.0) is None for _ in range(100)) and quota.calls == 0

    def test_a_quota_must_be_finite(self) -> None:
        with pytest.raises(ValueError):
            FaultPlan(account_rate_per_s=float("inf"))


async def test_every_client_shares_the_simulators_quota(probe: aiohttp.ClientSession) -> None:
    """Two clients of one simulator together get the account's rate, no more."""
    sim = ItronSimulator(faults=FaultPlan(account_rate_per_s=3.0), seed=1)
    await sim.start()
    try:
        statuses = []
        async with aiohttp.ClientSession() as other:
            for client in (probe, other, probe, other, probe):
                async with client.get(f"{sim.base_url}{API}s/batch-request/j") as r:
                    statuses.append(r.status)
                    retry_after = r.headers.get("Retry-After")
        assert statuses.count(429) == 2 and retry_after == "1"
        async with probe.get(f"{sim.base_url}/_sim/rate-limits") as r:
            assert (await r.json())["account_quota"] == {"calls": 5, "refused": 2}
    finally:
        await sim.stop()
