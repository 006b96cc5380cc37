"""The loop reacts to background work as it ends, not after its busy wait: with that wait
made 30 s long, a request still goes from read to file-ready (several vendor calls and
transactions, each ending while the loop waits) in a few seconds, and the worker stops at
once. Before the loop waited on its mailbox, each of those steps waited in consume()."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import itron_connection, running
from worker.config import Settings
from worker.runtime import Worker
from worker.testing import OutputReader, Publisher, itron_request, terminal

LONG_WAIT_S = 30.0


async def test_answers_and_commits_wake_the_loop(
    settings: Settings, itron_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.runtime.worker.BUSY_WAIT_S", LONG_WAIT_S)
    worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
    async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
        await pub.send(itron_request("wake-1"))
        await pub.flush()
        # Far less than one busy wait: only wake-ups can get it there in time.
        out = await reader.wait_for(lambda o: terminal(o, ["wake-1"]), timeout=LONG_WAIT_S / 2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < LONG_WAIT_S / 2
    assert out.statuses("wake-1")[-1] == "SUCCEEDED" and len(out.files_for("wake-1")) == 1
