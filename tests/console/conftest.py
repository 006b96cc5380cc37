"""The console against the test's broker and topics: started in the test's event loop
on a free loopback port, with an HTTP client that keeps its session cookie."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr
from structlog.testing import capture_logs

from worker.config import Settings
from worker.console.app import Console, ConsoleOptions, serve
from worker.kafka import ensure_topics
from worker.observability import configure_logging
from worker.testing import eventually

TOKEN = "console-test-token-4f1c"


@asynccontextmanager
async def console_running(
    settings: Settings,
    *,
    token: str | None = TOKEN,
    connections_file: Path | None = None,
    worker_metrics: tuple[str, ...] = (),
    index_dir: Path | None = None,
    create_topics: bool = True,
) -> AsyncIterator[tuple[Console, str]]:
    if create_topics:
        await ensure_topics(settings)
    options = ConsoleOptions(
        host="127.0.0.1", port=0, token=SecretStr(token) if token else None, connections_file=connections_file,
        worker_metrics=worker_metrics, index_dir=index_dir,
    )  # fmt: skip
    async with serve(settings, options) as (console, url):
        yield console, url


class Browserless:
    """An HTTP client of the console, as a browser would be: cookies kept, forms posted
    with the CSRF token read from the page it was on."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path) as response:
            return response.status, await response.text()

    async def json(self, path: str) -> Any:
        async with self.session.get(self.base + path) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(
        self, path: str, data: dict[str, Any] | list[tuple[str, str]], *, origin: str | None = None
    ) -> tuple[int, str]:
        headers = {"Origin": origin} if origin else {}
        async with self.session.post(self.base + path, data=data, headers=headers, allow_redirects=True) as response:
            return response.status, await response.text()

    async def sign_in(self, name: str = "alice", token: str = TOKEN) -> tuple[int, str]:
        return await self.post("/login", {"name": name, "token": token})

    async def csrf(self, path: str = "/pauses") -> str:
        _status, html = await self.get(path)
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert found, "no CSRF token on the page: not signed in?"
        return found[1]


@contextmanager
def info_logs() -> Iterator[list[dict[str, Any]]]:
    """The log entries of the block, info level included (the suite logs warnings only)."""
    configure_logging("info", "console")
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        configure_logging("warning", "console")


@asynccontextmanager
async def client(base: str) -> AsyncIterator[Browserless]:
    # unsafe=True: keep cookies for an IP address host (127.0.0.1), as browsers do
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Browserless(base, session)


async def caught_up(console: Console) -> None:
    await eventually(lambda: console.follower.progress.caught_up, timeout=30, what="console index caught up")


async def indexed(console: Console, request_id: str, status: str) -> None:
    """Wait until the console's index shows ``request_id`` with ``status``."""

    async def check() -> bool:
        rows = await console.index.call(lambda index: index.search(_query(request_id)))
        return any(r.request_id == request_id and r.status == status for r in rows)

    await eventually(check, timeout=30, what=f"{request_id} {status} in the console")


def _query(request_id: str) -> Any:
    from worker.console.index import JobQuery

    return JobQuery(request_id=request_id)


async def dead_letter_for_a_missing_connection(settings: Settings, sim: Any, tmp_path: Path) -> tuple[str, Path]:
    """A request for connection ``itron-eu``, which the worker does not have: REJECTED and
    dead-lettered. Returns its id and a connections file still without ``itron-eu``."""
    from tests.conftest import itron_connection
    from tests.ops.conftest import rid, worker_running, write_connections
    from worker.testing import OutputReader, Publisher, itron_request, terminal

    r = rid("late-conn")
    async with worker_running(settings, sim), Publisher(settings) as pub, OutputReader(settings) as reader:
        await pub.send(itron_request(r, connection="itron-eu"))
        await pub.flush()
        await reader.wait_for(lambda o: terminal(o, [r]) and o.dlq, what="rejected and dead-lettered")
    return r, write_connections(tmp_path / "connections.json", {"itron": itron_connection(sim.base_url)})
