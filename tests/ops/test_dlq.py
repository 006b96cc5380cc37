"""``dlq list`` shows why records were dead-lettered; ``dlq replay`` sends them back
once the cause is fixed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import itron_connection
from tests.ops.conftest import cli, rid, submits, worker_running, write_connections
from worker.config import Settings
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, itron_request, terminal


class TestDlqList:
    async def test_a_record_that_is_not_avro_is_listed_with_its_reason(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        junk, good = f"junk-{rid('k')}".encode(), rid("good")
        async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.raw(b'{"this": "is json"}', key=junk)
            await pub.send(itron_request(good, connection="nope"))
            await pub.flush()
            out = await reader.wait_for(lambda o: len(o.dlq) == 2, what="two dead letters")
        original = next(d for d in out.dlq if d["key"] == junk)

        result = await cli(settings, "dlq", "list", "--output", "json")
        assert result.exit_code == 0, result.output
        rows = {row["key"]: row for row in json.loads(result.stdout)}
        row = rows[junk.decode()]
        assert row["reason_code"] == "not_avro" and "neither C3" in row["reason"]
        assert (row["topic"], row["partition"], row["offset"]) == (
            settings.topics.requests, original["partition"], original["offset"]
        )  # fmt: skip
        assert row["request_id"] is None and row["failed_at"].endswith("Z")
        assert rows[good]["request_id"] == good and rows[good]["reason_code"] == "unknown_connection"

        only = await cli(settings, "dlq", "list", "--reason", "unknown_connection", "--output", "json")
        assert [r["request_id"] for r in json.loads(only.stdout)] == [good]
        later = await cli(settings, "dlq", "list", "--since", "2999-01-01", "--output", "json")
        assert json.loads(later.stdout) == []
        table = await cli(settings, "dlq", "list")
        assert "not_avro" in table.stdout and junk.decode() in table.stdout and "2 of 2 dead letters" in table.stderr


class TestDlqReplay:
    async def test_after_adding_the_missing_connection_a_rejected_request_succeeds(
        self, settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
    ) -> None:
        r = rid("late-conn")
        async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request(r, connection="itron-eu"))
            await pub.flush()
            out = await reader.wait_for(lambda o: terminal(o, [r]), what="rejected")
        assert out.statuses(r) == ["REJECTED"] and out.events(r)[0]["error"]["code"] == "unknown_connection"

        before = write_connections(tmp_path / "before.json", {"itron": itron_connection(itron_sim.base_url)})
        fixed = {name: itron_connection(itron_sim.base_url) for name in ("itron", "itron-eu")}
        after = write_connections(tmp_path / "after.json", fixed)
        still = await cli(settings, "dlq", "replay", "--dry-run", "-c", str(before))
        assert still.exit_code == 0, still.output
        assert f"{r}  still invalid: unknown_connection: no connection named 'itron-eu'" in still.stdout
        now = await cli(settings, "dlq", "replay", "--dry-run", "-c", str(after))
        assert f"{r}  accepted now (was unknown_connection): resubmit (was rejected)" in now.stdout

        posts = submits(itron_sim)
        async with (
            worker_running(settings, itron_sim, "itron", "itron-eu"),
            OutputReader(settings) as reader,
        ):
            result = await cli(settings, "dlq", "replay", "--reason", "unknown_connection")
            assert result.exit_code == 0, result.output
            assert "replayed 1 of 1 matching records" in result.stderr
            out = await reader.wait_for(lambda o: terminal(o, [r], frozenset({"SUCCEEDED", "FAILED"})))
        assert out.statuses(r)[0] == "REJECTED" and out.statuses(r)[-1] == "SUCCEEDED"
        assert out.statuses(r)[1] == "ACCEPTED" and len(out.files_for(r)) == 1
        assert submits(itron_sim) == posts + 1
