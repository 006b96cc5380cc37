"""Fixtures of the store's unit tests: one small memory budget per module, a clock they move."""

from __future__ import annotations

import pytest

from tests.unit.store_support import MIB, Clock
from worker.store import StoreMemory, StoreOptions


@pytest.fixture(scope="module")
def memory() -> StoreMemory:
    return StoreMemory(StoreOptions(cache_bytes=16 * MIB, write_buffer_bytes=4 * MIB))


@pytest.fixture
def clock() -> Clock:
    return Clock()
