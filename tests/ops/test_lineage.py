"""``jobs list`` and ``jobs show`` tell a finished request's story from the topics alone.

One worker runs at the start of the module and finishes the requests; the tests then
read the topics it left behind (the worker is stopped, so nothing moves under them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Producer

from tests.conftest import make_settings
from tests.ops.conftest import cli, rid, worker_running
from worker.codec import Codec
from worker.config import Settings, TopicSettings
from worker.kafka import base_config
from worker.ops.partitioner import partition_for
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import Output, OutputReader, Publisher, itron_request, terminal


@dataclass
class Finished:
    settings: Settings
    out: Output
    request_id: str  # published with the worker's partitioner
    elsewhere: str  # published to a partition other than its murmur2 one
    elsewhere_partition: int
    vendor_job_ids: set[str]


@pytest.fixture(scope="module")
async def finished(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Finished]:
    topics = TopicSettings(partitions=3).prefixed(f"l{uuid.uuid4().hex[:8]}.")
    settings = make_settings(kafka_bootstrap, topics, tmp_path_factory.mktemp("results"))
    sim = ItronSimulator(timing=Timing(stages=(0.1, 0.1, 0.1)), seed=5)
    await sim.start()
    r, other = rid("lineage"), rid("elsewhere")
    elsewhere_partition = (partition_for(other.encode(), 3) + 1) % 3
    try:
        async with worker_running(settings, sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request(r, labels={"batch": "march"}))
            await pub.flush()
            producer = Producer(base_config(settings))
            producer.produce(
                topics.requests,
                key=other.encode(),
                value=Codec().encode("ExportRequested", itron_request(other)),
                partition=elsewhere_partition,
            )
            producer.flush(10)
            out = await reader.wait_for(lambda o: terminal(o, [r, other]) and len(o.files) >= 2, what="both finished")
        yield Finished(settings, out, r, other, elsewhere_partition, set(sim.jobs))
    finally:
        await sim.stop()


class TestJobsList:
    async def test_lists_the_finished_job_with_its_vendor_job(self, finished: Finished) -> None:
        result = await cli(finished.settings, "jobs", "list", "--output", "json")
        assert result.exit_code == 0, result.output
        rows = {row["request_id"]: row for row in json.loads(result.stdout)}
        row = rows[finished.request_id]
        assert (row["status"], row["phase"]) == ("SUCCEEDED", "DONE")
        assert (row["vendor"], row["connection"], row["tenant"]) == ("itron", "itron", "acme")
        assert row["vendor_job_id"] in finished.vendor_job_ids
        assert row["sequence"] == len(finished.out.statuses(finished.request_id))
        assert row["possible_duplicate"] is False and row["updated_at"].endswith("Z")

    @pytest.mark.parametrize(
        ("flags", "listed"),
        [
            (["--status", "SUCCEEDED"], True),
            (["--status", "FAILED,RUNNING"], False),
            (["--vendor", "itron"], True),
            (["--vendor", "opengate"], False),
            (["--tenant", "acme"], True),
            (["--tenant", "other"], False),
            (["--connection", "itron"], True),
            (["--since", "-1h"], True),
            (["--since", "2999-01-01"], False),
        ],
    )
    async def test_filters(self, finished: Finished, flags: list[str], listed: bool) -> None:
        result = await cli(finished.settings, "jobs", "list", *flags, "--output", "json")
        assert result.exit_code == 0, result.output
        assert (finished.request_id in {row["request_id"] for row in json.loads(result.stdout)}) is listed

    async def test_table_shows_the_job(self, finished: Finished) -> None:
        result = await cli(finished.settings, "jobs", "list")
        assert result.exit_code == 0, result.output
        line = next(line for line in result.stdout.splitlines() if finished.request_id in line)
        assert "SUCCEEDED" in line and "itron/itron" in line
        assert "2 of 2 jobs" in result.stderr


class TestJobsShow:
    async def test_lineage_from_request_to_file(self, finished: Finished) -> None:
        r = finished.request_id
        result = await cli(finished.settings, "jobs", "show", r, "--output", "json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        events = finished.out.events(r)
        # request
        assert data["request"]["tenant"] == "acme" and data["request"]["labels"] == {"batch": "march"}
        assert data["request"]["job"]["type"] == "ItronBatchRequest" and data["request"]["replay_of"] is None
        # vendor job
        vendor_job_id = events[-1]["vendor_job_id"]
        assert vendor_job_id in finished.vendor_job_ids
        assert data["vendor_job"]["vendor_job_id"] == vendor_job_id
        assert data["vendor_job"]["submit_attempts"] == 1 and data["vendor_job"]["possible_duplicate"] is False
        # every status change, in order
        assert [s["status"] for s in data["statuses"]] == [e["status"] for e in events]
        assert [s["sequence"] for s in data["statuses"]] == list(range(1, len(events) + 1))
        assert data["statuses"][0]["status"] == "ACCEPTED" and data["statuses"][-1]["status"] == "SUCCEEDED"
        # the file, its signature masked
        (file,) = data["files"]
        announced = finished.out.files_for(r)[0]
        assert file["url"].split("?")[0] == announced["url"].split("?")[0]
        assert "sig=***" in file["url"] and "sig=***" not in announced["url"]
        assert file["reannounced"] is False and file["expires_at"].endswith("Z")
        assert data["scanned_all_partitions"] == []

    async def test_table_view(self, finished: Finished) -> None:
        result = await cli(finished.settings, "jobs", "show", finished.request_id)
        assert result.exit_code == 0, result.output
        text = result.stdout
        for expected in ("request", "vendor job", "status changes", "files", "SUCCEEDED", "ACCEPTED", "march"):
            assert expected in text

    async def test_key_outside_its_murmur2_partition_is_found_by_scanning(self, finished: Finished) -> None:
        """A producer with another partitioner put the request (and so its state) elsewhere."""
        result = await cli(finished.settings, "jobs", "show", finished.elsewhere, "--output", "json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["state_partition"] == finished.elsewhere_partition
        assert data["statuses"][-1]["status"] == "SUCCEEDED"
        assert data["scanned_all_partitions"] == [finished.settings.topics.jobs]
