"""A record that cannot be written affects only its own request, never the batch or the
partition: a request whose state record would be too large is rejected at the door, and
a record the broker refuses anyway (a topic's limit lowered under a running worker)
ends its request with a reason while every other request carries on."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from tests.conftest import itron_connection, running
from worker.config import Settings
from worker.kafka import admin_client
from worker.runtime import Worker
from worker.testing import OutputReader, Publisher, itron_request, terminal


def request_with_note(request_id: str, note: str) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date()
    tokens = {
        "StartEventDate": (today - dt.timedelta(days=30)).isoformat(),
        "EndEventDate": today.isoformat(),
        "ServicePoint": "9000053409",
        "Note": note,
    }
    return itron_request(request_id, tokens=tokens)


async def lower_record_limit(settings: Settings, topic: str, max_bytes: int) -> None:
    admin = admin_client(settings)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        await asyncio.wrap_future(future)


class TestOversizedRecords:
    async def test_a_request_whose_state_would_be_too_large_is_rejected_and_the_rest_succeed(
        self, settings: Settings, itron_sim: Any
    ) -> None:
        """~200 KB of control characters: within the request limit, but JSON-escaped its
        state record would be ~1.2 MB, past what the broker takes."""
        ids = [f"ok-{i}" for i in range(5)]
        async with (
            running(Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})),
            Publisher(settings) as pub,
            OutputReader(settings) as reader,
        ):
            await pub.send(request_with_note("huge", "\x01" * 200_000))
            for r in ids:
                await pub.send(itron_request(r))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, [*ids, "huge"]), timeout=60, what="all terminal")
        (event,) = out.events("huge")
        assert event["status"] == "REJECTED" and event["error"]["code"] == "state_too_large"
        assert [d["reason_code"] for d in out.dlq] == ["state_too_large"]
        assert all(out.events(r)[-1]["status"] == "SUCCEEDED" for r in ids)

    async def test_a_record_the_broker_refuses_ends_only_its_own_request(
        self, settings: Settings, itron_sim: Any
    ) -> None:
        worker = Worker(settings, connections={"itron": itron_connection(itron_sim.base_url)})
        async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
            # Lowered under the running worker: its own limit (max_record_bytes) is higher.
            await lower_record_limit(settings, settings.topics.jobs, 20_000)
            await pub.send(request_with_note("wide", "n" * 30_000))
            await pub.flush()
            await reader.wait_for(lambda o: terminal(o, ["wide"]), timeout=60, what="the refused request ended")
            ids = [f"after-{i}" for i in range(5)]
            for r in ids:
                await pub.send(itron_request(r))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, ids), timeout=60, what="later requests terminal")
        (event,) = out.events("wide")
        assert event["status"] == "REJECTED" and event["error"]["code"] == "record_refused"
        assert "too large" in event["error"]["message"].lower()
        assert all(out.events(r)[-1]["status"] == "SUCCEEDED" for r in ids)
