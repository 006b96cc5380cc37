"""Giving freed heap memory back: the trimmer's schedule and accounting (a fake trim at
the seam it owns), and the allocator calls themselves on this machine's libc."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from worker import allocator
from worker.observability import Metrics
from worker.runtime.trimmer import MemoryTrimmer


class FakeHeap:
    """A trim that releases ``releases`` bytes of a resident set, and a clock."""

    def __init__(self, releases: int) -> None:
        self.resident = 100_000_000
        self.releases = releases
        self.trims = 0
        self.now = 0.0

    def trim(self) -> bool:
        self.trims += 1
        self.resident -= self.releases
        return self.releases > 0


def trimmer(heap: FakeHeap, interval_s: float = 30.0) -> tuple[MemoryTrimmer, Metrics]:
    metrics = Metrics()
    return MemoryTrimmer(interval_s, metrics, lambda: heap.now, heap.trim, lambda: heap.resident), metrics


def value(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


class TestMemoryTrimmer:
    async def test_a_trim_runs_once_per_interval_and_counts_what_it_gave_back(self) -> None:
        heap = FakeHeap(releases=4096)
        trim, metrics = trimmer(heap)
        for heap.now in (0.0, 10.0, 29.9):
            trim.run_when_due()
        await trim.close()
        assert heap.trims == 0
        for heap.now in (30.0, 31.0, 59.0, 60.5):
            trim.run_when_due()
            await trim.close()
        assert heap.trims == 2
        assert value(metrics, "export_worker_memory_trims_total") == 2
        assert value(metrics, "export_worker_memory_trimmed_bytes_total") == 8192

    async def test_no_second_trim_starts_while_one_is_running(self) -> None:
        heap = FakeHeap(releases=1)
        started, release = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_trim() -> bool:
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
            return heap.trim()

        trim = MemoryTrimmer(1.0, Metrics(), lambda: heap.now, slow_trim, lambda: heap.resident)
        heap.now = 5.0
        trim.run_when_due()
        await asyncio.wait_for(started.wait(), 10)
        heap.now = 50.0
        trim.run_when_due()  # the first is still running
        release.set()
        await trim.close()
        assert heap.trims == 1

    async def test_a_trim_that_releases_nothing_counts_no_bytes(self) -> None:
        heap = FakeHeap(releases=0)
        trim, metrics = trimmer(heap)
        heap.now = 30.0
        trim.run_when_due()
        await trim.close()
        assert heap.trims == 1 and value(metrics, "export_worker_memory_trims_total") == 1
        assert value(metrics, "export_worker_memory_trimmed_bytes_total") == 0

    async def test_an_interval_of_zero_never_trims(self) -> None:
        heap = FakeHeap(releases=1)
        trim, _ = trimmer(heap, interval_s=0)
        for heap.now in (0.0, 1e6):
            trim.run_when_due()
        await trim.close()
        assert heap.trims == 0


glibc = pytest.mark.skipif(allocator._libc() is None, reason="glibc only (musl, macOS: the calls are no-ops)")


class TestAllocator:
    @glibc
    def test_freed_memory_is_given_back(self) -> None:
        """Memory freed in the middle of the heap is returned: the resident set falls."""
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(64 * 1024) for _ in range(1024)]  # 64 MiB below mmap's threshold
        for block in blocks:
            ctypes.memset(block, 1, 64 * 1024)
        keep = libc.malloc(64 * 1024)  # above them, it pins the heap's top: free() cannot give them back
        for block in blocks:
            libc.free(block)
        before = allocator.resident_bytes()
        assert allocator.trim()
        assert before - allocator.resident_bytes() > 32 * 1024 * 1024
        libc.free(keep)

    @glibc
    def test_the_operators_arena_setting_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
        assert not allocator.limit_arenas()

    def test_the_resident_set_is_read(self) -> None:
        assert allocator.resident_bytes() > 1024 * 1024
