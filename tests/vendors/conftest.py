"""Shared fixtures of the vendor adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp session per test, as the worker shares one per process."""
    async with aiohttp.ClientSession() as http:
        yield http
