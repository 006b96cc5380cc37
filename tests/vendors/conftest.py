"""Shared fixtures of the vendor adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from worker.config import ConnectionConfig
from worker.simulators import module
from worker.vendors import HttpClient, vendor_session


@pytest.fixture
async def session() -> AsyncIterator[HttpClient]:
    """The HTTP client adapters call through, one per test as the worker has one per
    process (``vendor_session``)."""
    async with vendor_session("export-worker/test") as client:
        yield client


@pytest.fixture
async def probe() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, for a test's own requests to a simulator (its controls,
    or what it serves), apart from the client under test."""
    async with aiohttp.ClientSession() as http:
        yield http


def token_connection(vendor: str, base_url: str, **update: Any) -> ConnectionConfig:
    """The simulator's demo connection, logging in where there is a choice (OpenGate: a
    password rather than an API key), so every vendor has a token endpoint."""
    conn: ConnectionConfig = module(vendor).demo_connection(base_url)
    if conn.api_key is not None:
        conn = ConnectionConfig.model_validate(
            {
                **conn.model_dump(exclude={"api_key"}),
                "username": "demo@example.com",
                "password": {"value": "demo-password"},
            }
        )
    return conn.model_copy(update=update)
