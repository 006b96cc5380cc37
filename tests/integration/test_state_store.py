"""Finished jobs live in the partition stores, not in memory (issue 13), on the real
broker: a duplicate of a finished request is still answered DUPLICATE after a restart
(warm: only the tail is read), after a takeover by another worker (cold), and after its
store was corrupted or belongs to another log (wiped and rebuilt)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING

from tests.conftest import itron_connection, make_settings, running
from worker.codec import Codec
from worker.config import PolicyConfig, Settings, TopicSettings
from worker.engine.model import JobState
from worker.kafka import Chunk, base_config, stream_compacted
from worker.runtime import Worker
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.store.peek import OPEN_HEADER, peek_open, read_open_header
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal

REQUESTS = [f"done-{i}" for i in range(6)]


def opens(worker: Worker, result: str) -> float:
    value = worker.metrics.registry.get_sample_value("export_worker_store_opens_total", {"result": result})
    return value or 0.0


def restored_records(worker: Worker, mode: str) -> float:
    value = worker.metrics.registry.get_sample_value("export_worker_restored_records_total", {"mode": mode})
    return value or 0.0


def worker_for(settings: Settings, sim: ItronSimulator) -> Worker:
    return Worker(settings, connections={"itron": itron_connection(sim.base_url)})


async def finish_requests(settings: Settings, sim: ItronSimulator) -> None:
    """One worker runs every request to SUCCEEDED; then its finished jobs leave memory
    and are in the stores."""
    worker = worker_for(settings, sim)
    async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
        for rid in REQUESTS:
            await pub.send(itron_request(rid))
        await pub.flush()
        await reader.wait_for(lambda o: terminal(o, REQUESTS, frozenset({"SUCCEEDED"})), timeout=60)

        async def evicted() -> bool:
            hot = {rid for part in worker.partitions.values() for rid in part.jobs}
            stored = {
                rid
                for n in worker.partitions
                if (store := worker.stores.get(n)) is not None
                for rid in REQUESTS
                if store.get(rid) is not None
            }
            return not hot & set(REQUESTS) and stored == set(REQUESTS)

        await eventually(evicted, timeout=20, what="finished jobs only in the stores")
    assert len(sim.jobs) == len(REQUESTS)


async def duplicates_answered(settings: Settings, sim: ItronSimulator, worker: Worker) -> None:
    """Every finished request sent again is answered DUPLICATE, with no new vendor job."""
    async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
        for rid in REQUESTS:
            await pub.send(itron_request(rid))
        await pub.flush()
        await reader.wait_for(
            lambda o: all(o.statuses(rid).count("DUPLICATE") == 1 for rid in REQUESTS),
            timeout=60,
            what="a DUPLICATE for every finished request",
        )
        assert all(
            rid not in part.jobs or not part.jobs[rid].open for part in worker.partitions.values() for rid in REQUESTS
        )
    assert len(sim.jobs) == len(REQUESTS)


async def every_state_record_carries_its_open_peek(settings: Settings) -> None:
    """What the worker wrote to export.jobs, read as a restore reads it: every state's
    record has the header a restore reads instead of walking it, and it says what the
    walk would read."""
    heads: dict[bytes, bytes] = {}
    values: dict[bytes, bytes] = {}

    async def fold(chunk: Chunk) -> None:
        for key, value in chunk.latest.items():
            heads.pop(key, None)
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        heads.update(chunk.heads or {})

    conf = {**base_config(settings), "group.id": f"heads-{uuid.uuid4().hex[:6]}"}
    starts = dict.fromkeys(range(settings.topics.partitions), OFFSET_BEGINNING)
    await stream_compacted(conf, settings.topics.jobs, starts, fold, stall_s=20, header=OPEN_HEADER)
    assert values and sorted(heads) == sorted(values)
    codec = Codec()
    assert all(read_open_header(heads[key]) == peek_open(value, codec) for key, value in values.items())


class TestFinishedJobsInTheStore:
    async def test_a_restart_reads_only_the_tail_and_still_knows_finished_jobs(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        await finish_requests(settings, itron_sim)
        again = worker_for(settings, itron_sim)  # same instance id and state dir: warm
        await duplicates_answered(settings, itron_sim, again)
        assert opens(again, "warm") == settings.topics.partitions
        assert restored_records(again, "cold") == 0
        # Only what was written after the stores were last written: nothing at all here.
        assert restored_records(again, "warm") == 0

    async def test_a_takeover_rebuilds_the_stores_from_the_topic(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path, itron_sim: ItronSimulator
    ) -> None:
        first = make_settings(kafka_bootstrap, topics, tmp_path / "a")
        await finish_requests(first, itron_sim)
        other = make_settings(kafka_bootstrap, topics, tmp_path / "b", group_id=first.group_id)
        taker = worker_for(other, itron_sim)  # another worker, another disk: cold
        await duplicates_answered(other, itron_sim, taker)
        assert opens(taker, "no_checkpoint") == topics.partitions and opens(taker, "warm") == 0
        assert restored_records(taker, "cold") >= len(REQUESTS)

    async def test_corrupt_and_foreign_stores_are_wiped_and_rebuilt(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        await finish_requests(settings, itron_sim)
        mine = settings.state_dir / settings.group_id / settings.instance_id
        stores = {int(d.name.rsplit("-", 1)[1]): d for d in mine.iterdir()}
        assert sorted(stores) == list(range(settings.topics.partitions))
        # Partition 0: a checkpoint of another incarnation of the topic (recreated).
        checkpoint = stores[0] / "checkpoint.json"
        data = json.loads(checkpoint.read_text())
        checkpoint.write_text(json.dumps({**data, "topic_id": str(uuid.uuid4())}))
        # Partition 1: RocksDB's MANIFEST garbled.
        manifest = next((stores[1] / "db").glob("MANIFEST-*"))
        garbled = bytearray(manifest.read_bytes())
        garbled[10:40] = b"\xff" * 30
        manifest.write_bytes(garbled)
        # Partition 2: no checkpoint (a restore that never completed).
        (stores[2] / "checkpoint.json").unlink()
        again = worker_for(settings, itron_sim)
        await duplicates_answered(settings, itron_sim, again)
        assert (opens(again, "other_log"), opens(again, "corrupt"), opens(again, "no_checkpoint")) == (1, 1, 1)
        assert restored_records(again, "cold") >= 1


class TestTrimmedBodies:
    async def test_an_accepted_job_keeps_only_its_view_in_memory_and_full_records_on_the_topic(
        self, settings: Settings
    ) -> None:
        points = ",".join(f"90000{i:05d}" for i in range(300))  # a body of a few KiB
        sim = ItronSimulator(timing=Timing(stages=(3600.0, 3600.0, 3600.0)), seed=3)
        await sim.start()
        try:
            worker = worker_for(settings, sim)
            async with running(worker), Publisher(settings) as pub, OutputReader(settings) as reader:
                await pub.send(itron_request("big", tokens={"ServicePoint": points}))
                await pub.flush()

                def trimmed() -> JobState | None:
                    state = next((p.jobs["big"] for p in worker.partitions.values() if "big" in p.jobs), None)
                    return state if state is not None and state.body_in_store else None

                kept = await eventually(trimmed, timeout=30, what="the accepted job trimmed in memory")
                assert json.loads(kept.job_json) == {"subscription_id": None, "filetype": "Csv"}
                for job in sim.jobs.values():  # now let it finish
                    job.durations = (0.0, 0.0, 0.0)
                out = await reader.wait_for(lambda o: terminal(o, ["big"], frozenset({"SUCCEEDED"})), timeout=60)
            stored = out.jobs["big"]
            assert stored is not None and stored["status"] == "SUCCEEDED"
            assert json.loads(stored["job_json"])["tokens"]["ServicePoint"] == points
        finally:
            await sim.stop()


class TestParkedJobs:
    async def test_a_takeover_parks_polling_jobs_and_polls_them_to_the_end(
        self, kafka_bootstrap: str, topics: TopicSettings, tmp_path: Path
    ) -> None:
        """Polling jobs whose next poll is well ahead come back undecoded: counted open
        and in the gauge, scheduled, then polled and finished as usual."""
        ids = [f"park-{i}" for i in range(4)]
        # The first poll 15 s after acceptance: still ahead when the taker reads the state
        # (parking wants it at least PARK_AHEAD_MS away).
        slow = PolicyConfig(first_poll_s=15, poll_initial_s=15, poll_multiplier=1.0, poll_max_s=15)
        sim = ItronSimulator(timing=Timing(stages=(3600.0, 3600.0, 3600.0)), seed=5)
        await sim.start()
        try:
            first = make_settings(kafka_bootstrap, topics, tmp_path / "a")
            conns = {"itron": itron_connection(sim.base_url, policy=slow)}
            async with Publisher(first) as pub, OutputReader(first) as reader:
                async with running(Worker(first, connections=conns)):
                    for rid in ids:
                        await pub.send(itron_request(rid))
                    await pub.flush()
                    await reader.wait_for(
                        lambda o: all(any(e["vendor_job_id"] for e in o.events(rid)) for rid in ids),
                        timeout=60,
                        what="every job accepted",
                    )
                await every_state_record_carries_its_open_peek(first)
                other = make_settings(kafka_bootstrap, topics, tmp_path / "b", group_id=first.group_id)
                taker = Worker(other, connections=conns)
                async with running(taker):
                    await eventually(lambda: not taker.partitions.restoring(), timeout=30, what="restored")
                    parked = sum(part.jobs.parked for part in taker.partitions.values())
                    assert parked == len(ids) and taker.partitions.open_jobs() == len(ids)
                    counts = taker.partitions.open_job_counts()  # the gauge's source, without decoding
                    assert sum(counts.values()) == len(ids) and {vendor for vendor, _ in counts} == {"itron"}
                    assert sum(part.jobs.parked for part in taker.partitions.values()) == len(ids)
                    for job in sim.jobs.values():  # now let them finish at their next poll
                        job.durations = (0.0, 0.0, 0.0)
                    await reader.wait_for(
                        lambda o: terminal(o, ids, frozenset({"SUCCEEDED"})),  # each with its file read
                        timeout=60,
                        what="every parked job polled to a file",
                    )
                    assert sum(part.jobs.parked for part in taker.partitions.values()) == 0
        finally:
            await sim.stop()
        assert len(sim.jobs) == len(ids)  # no job submitted twice
