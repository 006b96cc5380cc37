"""Fleet budgets: a worker's share of a connection's rate and concurrency by the part of
export.requests it owns (pure), and a limiter resized to it."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from worker.budgets import AdaptiveLimit, BudgetMode, Ownership, share_of
from worker.scheduler import Limiter

FLEET = BudgetMode.FLEET


class TestShares:
    def test_two_of_six_partitions_get_a_third_of_the_rate_and_of_the_calls(self) -> None:
        share = share_of(30.0, 9, Ownership(2, 6), FLEET)
        assert (share.rate_per_s, share.max_concurrency) == (10.0, 3)

    def test_a_worker_that_owns_partitions_always_has_one_call(self) -> None:
        share = share_of(1.0, 2, Ownership(1, 12), FLEET)
        assert share.max_concurrency == 1 and math.isclose(share.rate_per_s, 1 / 12)

    def test_a_worker_that_owns_nothing_yet_counts_one_partition(self) -> None:
        """Between rebalances it still finishes what it started, at a partition's share."""
        assert share_of(12.0, 12, Ownership(0, 6), FLEET) == share_of(12.0, 12, Ownership(1, 6), FLEET)

    def test_before_the_partition_count_is_known_the_whole_budget_applies(self) -> None:
        share = share_of(12.0, 12, Ownership(0, 0), FLEET)
        assert (share.rate_per_s, share.max_concurrency) == (12.0, 12)

    def test_process_mode_gives_every_process_the_whole_budget(self) -> None:
        share = share_of(12.0, 12, Ownership(1, 6), BudgetMode.PROCESS)
        assert (share.rate_per_s, share.max_concurrency) == (12.0, 12)

    @given(
        st.floats(0.01, 10_000),
        st.integers(1, 1_000),
        st.lists(st.integers(1, 64), min_size=1, max_size=12),
    )
    def test_a_fleet_never_exceeds_the_budget_but_by_one_call_per_worker(
        self, rate: float, concurrency: int, owned: list[int]
    ) -> None:
        """Whatever the split of the partitions, the shares add up to the fleet's rate,
        and to its concurrency plus at most one call per worker."""
        total = sum(owned)
        shares = [share_of(rate, concurrency, Ownership(n, total), FLEET) for n in owned]
        assert math.isclose(sum(s.rate_per_s for s in shares), rate, rel_tol=1e-9)
        calls = sum(s.max_concurrency for s in shares)
        assert calls <= concurrency + len(owned)
        assert all(s.max_concurrency >= 1 for s in shares)


class TestResizedLimiter:
    def test_a_smaller_share_caps_calls_at_once_and_keeps_those_in_flight(self) -> None:
        limiter = Limiter(max_concurrency=4, rate_per_s=1000)
        assert all(limiter.try_acquire(0.0) for _ in range(3))
        limiter.resize(0.0, max_concurrency=2, rate_per_s=500)
        assert not limiter.try_acquire(0.0) and limiter.in_flight == 3
        for _ in range(2):
            limiter.release()
        assert limiter.try_acquire(0.0)

    def test_tokens_saved_at_a_larger_rate_do_not_burst_past_the_new_one(self) -> None:
        limiter = Limiter(max_concurrency=100, rate_per_s=50)  # 50 tokens saved up
        limiter.resize(10.0, max_concurrency=100, rate_per_s=2)
        taken = sum(limiter.try_acquire(10.0) for _ in range(10))
        assert taken == 2
        assert limiter.try_acquire(10.5) and not limiter.try_acquire(10.5)


class TestAdaptiveLimit:
    def test_a_429_halves_the_calls_once_per_burst(self) -> None:
        limit = AdaptiveLimit(16)
        for _ in range(5):  # five 429s of one burst
            limit.answered(10.0, 0.1, rate_limited=True)
        assert limit.calls == 8
        limit.answered(11.5, 0.1, rate_limited=True)
        assert limit.calls == 4

    def test_good_answers_grow_it_back_by_one_call_per_window_up_to_the_ceiling(self) -> None:
        limit = AdaptiveLimit(8)
        limit.answered(0.0, 0.1, rate_limited=True)
        assert limit.calls == 4
        for i in range(4):  # a window of 4 answers: almost one more call
            limit.answered(1.0 + i, 0.1, rate_limited=False)
        assert limit.calls == 4
        limit.answered(5.0, 0.1, rate_limited=False)
        assert limit.calls == 5
        for i in range(1000):
            limit.answered(10.0 + i, 0.1, rate_limited=False)
        assert limit.calls == 8

    def test_latency_climbing_far_above_its_usual_level_shrinks_it(self) -> None:
        limit = AdaptiveLimit(10)
        for i in range(200):
            limit.answered(i * 0.01, 0.1, rate_limited=False)
        assert limit.calls == 10
        now = 10.0
        while limit.calls == 10 and now < 20:  # the vendor slows down tenfold
            limit.answered(now, 1.0, rate_limited=False)
            now += 0.01
        assert limit.calls == 9

    def test_it_never_falls_below_one_call_or_above_a_new_ceiling(self) -> None:
        limit = AdaptiveLimit(4)
        for i in range(20):
            limit.answered(i * 2.0, 0.1, rate_limited=True)
        assert limit.calls == 1
        limit = AdaptiveLimit(12)
        limit.set_ceiling(3)
        assert limit.calls == 3
        limit.set_ceiling(6)  # not held back by 429s: at the new share at once
        assert limit.calls == 6

    def test_a_new_share_keeps_a_backed_off_limit_in_proportion(self) -> None:
        limit = AdaptiveLimit(8)
        limit.answered(0.0, 0.1, rate_limited=True)
        assert limit.calls == 4
        limit.set_ceiling(16)
        assert limit.calls == 8
        limit.set_ceiling(2)
        assert limit.calls == 1

    def test_a_latency_that_is_no_duration_is_ignored(self) -> None:
        limit = AdaptiveLimit(4)
        for value in (math.nan, math.inf, -1.0):
            limit.answered(0.0, value, rate_limited=False)
        assert limit.calls == 4
