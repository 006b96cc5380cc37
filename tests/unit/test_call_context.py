"""A log line written during a vendor call says which job it is about, from the call's
own context (set once per call task), and never leaks into another task's lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from tests.log_capture import json_lines
from worker.observability import call_context


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    with json_lines(monkeypatch) as buffer:
        yield buffer


def lines(buffer: io.StringIO) -> dict[str, dict[str, object]]:
    return {row["event"]: row for row in map(json.loads, buffer.getvalue().splitlines())}


async def test_a_calls_log_lines_carry_its_context_and_only_its_own(stderr: io.StringIO) -> None:
    log = structlog.get_logger("call-context-test")

    async def call(request_id: str) -> None:
        call_context.set({"request_id": request_id, "vendor": "itron", "vendor_job_id": None})
        await asyncio.sleep(0)  # the other call runs meanwhile, with its own context
        log.info(f"inside {request_id}")
        log.info(f"explicit {request_id}", request_id="given")

    await asyncio.gather(asyncio.create_task(call("r1")), asyncio.create_task(call("r2")))
    log.info("outside")

    # The standard library's records (librdkafka's, aiohttp's) get it too.
    async def foreign() -> None:
        call_context.set({"request_id": "r3"})
        logging.getLogger("aiohttp.client").warning("from the stdlib")

    await asyncio.create_task(foreign())
    seen = lines(stderr)
    assert seen["inside r1"]["request_id"] == "r1" and seen["inside r2"]["request_id"] == "r2"
    assert seen["inside r1"]["vendor"] == "itron"
    assert seen["explicit r1"]["request_id"] == "given"  # what the line says wins
    assert "request_id" not in seen["outside"]
    assert seen["from the stdlib"]["request_id"] == "r3"
