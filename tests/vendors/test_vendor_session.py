"""The session every vendor call goes through (``worker.vendors.vendor_session``), against a
real local HTTP server: it keeps no cookies a vendor sets, and it puts no cap of its own
on concurrent calls (each connection's ``max_concurrency`` is the bound)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from worker.testing import local_app
from worker.vendors import vendor_session

CONCURRENT = 150  # above aiohttp's default cap of 100 connections per session


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """A server that sets a new cookie with every answer; ``/held`` answers only once
    ``release`` is set, and sets ``all_in`` when ``CONCURRENT`` requests are waiting."""
    counter = itertools.count()
    release = asyncio.Event()
    all_in = asyncio.Event()
    waiting = 0

    async def cookie(request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        response.set_cookie(f"session-{next(counter)}", "x" * 100)
        return response

    async def held(request: web.Request) -> web.Response:
        nonlocal waiting
        waiting += 1
        if waiting >= CONCURRENT:
            all_in.set()
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/cookie", cookie)
    app.router.add_get("/held", held)
    async with local_app(app) as port:
        try:
            yield f"http://127.0.0.1:{port}", release, all_in
        finally:
            release.set()


async def _get_many(session: aiohttp.ClientSession, url: str, n: int) -> None:
    for _ in range(n):
        async with session.get(url) as answer:
            await answer.read()


async def test_cookies_a_vendor_sets_are_not_kept(server: tuple[str, asyncio.Event, asyncio.Event]) -> None:
    # By name, not by address: aiohttp's default jar keeps no cookies of an IP address.
    url = server[0].replace("127.0.0.1", "localhost")
    async with aiohttp.ClientSession() as plain:  # what the worker used before: one cookie per answer kept
        await _get_many(plain, f"{url}/cookie", 20)
        assert len(plain.cookie_jar) == 20
    async with vendor_session("export-worker/test") as session:
        await _get_many(session, f"{url}/cookie", 20)
        assert len(session.cookie_jar) == 0


async def test_no_session_wide_cap_on_concurrent_calls(server: tuple[str, asyncio.Event, asyncio.Event]) -> None:
    url, release, all_in = server

    async with vendor_session("export-worker/test") as session:
        calls = [asyncio.create_task(_get_many(session, f"{url}/held", 1)) for _ in range(CONCURRENT)]
        try:
            # With aiohttp's default cap, 50 of them would wait for a connection and never arrive.
            await asyncio.wait_for(all_in.wait(), timeout=20)
        finally:
            release.set()
            await asyncio.gather(*calls)
