"""The timer heap and the per-connection limiter (no I/O; time is passed in)."""

from __future__ import annotations

import pytest

from worker.scheduler import Limiter, TimerHeap


class TestTimerHeap:
    def test_due_entries_come_out_in_time_order_and_later_ones_stay(self) -> None:
        heap = TimerHeap()
        heap.schedule(300, 0, "c")
        heap.schedule(100, 1, "a")
        heap.schedule(200, 0, "b")
        assert heap.pop_due(250, limit=10) == [(100, 1, "a"), (200, 0, "b")]
        assert heap.next_due_ms() == 300 and len(heap) == 1

    def test_entries_due_at_the_same_time_come_out_by_partition_then_id(self) -> None:
        heap = TimerHeap()
        for partition, rid in ((1, "a"), (0, "z"), (0, "m")):
            heap.schedule(100, partition, rid)
        assert heap.pop_due(100, limit=10) == [(100, 0, "m"), (100, 0, "z"), (100, 1, "a")]

    def test_the_same_job_due_twice_at_the_same_time_comes_out_twice(self) -> None:
        """The caller skips the second as it skips any stale entry."""
        heap = TimerHeap()
        heap.schedule(100, 0, "a")
        heap.schedule(100, 0, "a")
        assert heap.pop_due(100, limit=10) == [(100, 0, "a"), (100, 0, "a")]

    def test_a_turn_pops_no_more_than_its_limit(self) -> None:
        heap = TimerHeap()
        for i in range(5):
            heap.schedule(i, 0, str(i))
        assert len(heap.pop_due(10, limit=3)) == 3
        assert len(heap.pop_due(10, limit=3)) == 2

    def test_a_rescheduled_job_leaves_its_old_entry_for_the_caller_to_skip(self) -> None:
        """Entries are never removed in place: the caller compares the popped time with the job's."""
        heap = TimerHeap()
        heap.schedule(100, 0, "a")
        heap.schedule(500, 0, "a")
        assert heap.pop_due(1000, limit=10) == [(100, 0, "a"), (500, 0, "a")]

    def test_compact_keeps_only_the_partitions_still_owned(self) -> None:
        heap = TimerHeap()
        heap.schedule(300, 2, "c")
        heap.schedule(100, 1, "a")
        heap.schedule(200, 2, "b")
        heap.compact({2})
        assert heap.pop_due(1000, limit=10) == [(200, 2, "b"), (300, 2, "c")]

    @pytest.mark.parametrize("already", [0, 3, 100])
    def test_many_scheduled_at_once_come_out_as_if_pushed_one_by_one(self, already: int) -> None:
        """A takeover's bulk schedule (heapified, or pushed when few) keeps heap order."""
        bulk, single = TimerHeap(), TimerHeap()
        for i in range(already):
            bulk.schedule(1_000 - i, 0, f"old{i}")
            single.schedule(1_000 - i, 0, f"old{i}")
        entries = [((i * 7_919) % 500, 1, f"new{i}") for i in range(40)]
        bulk.schedule_many(entries)
        for entry in entries:
            single.schedule(*entry)
        assert bulk.pop_due(10_000, 1_000) == single.pop_due(10_000, 1_000)

    def test_an_empty_heap_has_no_next_due_time(self) -> None:
        assert TimerHeap().next_due_ms() is None


class TestLimiter:
    def test_no_more_calls_than_the_concurrency_cap_until_one_is_released(self) -> None:
        limiter = Limiter(max_concurrency=2, rate_per_s=1000)
        assert limiter.try_acquire(0.0) and limiter.try_acquire(0.0)
        assert not limiter.try_acquire(0.0)
        limiter.release()
        assert limiter.try_acquire(0.0)

    def test_the_rate_refills_tokens_over_time_up_to_the_burst(self) -> None:
        limiter = Limiter(max_concurrency=100, rate_per_s=2)
        assert limiter.try_acquire(10.0) and limiter.try_acquire(10.0)  # burst = rate
        assert not limiter.try_acquire(10.0)
        assert not limiter.try_acquire(10.4)
        assert limiter.try_acquire(10.5)  # one token after 0.5 s at 2/s
        limiter = Limiter(max_concurrency=100, rate_per_s=2)
        limiter.try_acquire(0.0)
        limiter.try_acquire(0.0)
        # A long idle period refills to the burst, not beyond.
        assert [limiter.try_acquire(1000.0) for _ in range(3)] == [True, True, False]

    def test_a_slow_rate_still_allows_one_call(self) -> None:
        limiter = Limiter(max_concurrency=5, rate_per_s=0.1)
        assert limiter.burst == 1.0
        assert limiter.try_acquire(0.0) and not limiter.try_acquire(5.0)
        assert limiter.try_acquire(10.0)

    def test_a_block_refuses_calls_until_it_ends_and_never_shortens(self) -> None:
        limiter = Limiter(max_concurrency=5, rate_per_s=100)
        limiter.block(100.0, 30.0)
        limiter.block(101.0, 5.0)  # a shorter Retry-After does not lift the longer block
        assert not limiter.try_acquire(129.9)
        assert limiter.try_acquire(130.0)

    def test_release_never_goes_below_zero(self) -> None:
        limiter = Limiter(max_concurrency=1, rate_per_s=10)
        limiter.release()
        assert limiter.in_flight == 0
        assert limiter.try_acquire(0.0) and not limiter.try_acquire(0.0)

    def test_an_explicit_burst_is_kept(self) -> None:
        limiter = Limiter(max_concurrency=10, rate_per_s=1, burst=3.0)
        assert [limiter.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
