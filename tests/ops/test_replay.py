"""``replay``: dry runs predict the worker, real runs create no duplicate vendor jobs,
--force exports again under derived ids, and interrupted runs resume exactly."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.conftest import itron_connection
from tests.ops.conftest import cli, consume_all, rid, submits, worker_running, write_connections
from worker.codec import Codec
from worker.config import Settings
from worker.kafka import base_config
from worker.ops.errors import CheckpointError
from worker.ops.partitioner import partition_for
from worker.ops.render import ConsoleHooks
from worker.ops.replay import ReplayOptions, replay_requests
from worker.simulators.base import Timing
from worker.simulators.itron import ItronSimulator
from worker.testing import Output, OutputReader, Publisher, eventually, itron_request, terminal


def predictions(stdout: str, ids: list[str]) -> dict[str, str]:
    """request id -> outcome text, from the dry run's per-request lines."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[1] in ids:
            out[parts[1]] = parts[2]
    return out


def summary(stdout: str) -> dict[str, int]:
    """The dry run's closing table: outcome -> records."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            out[cells[0]] = int(cells[1])
    return out


async def finish(reader: OutputReader, *ids: str) -> Output:
    return await reader.wait_for(lambda o: terminal(o, ids), what=f"{ids} terminal")


class TestDryRun:
    async def test_outcome_per_request_for_finished_running_rejected_and_unknown(
        self, settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
    ) -> None:
        done, failed, rejected, running, unknown = (rid(x) for x in ("done", "failed", "rejected", "running", "new"))
        async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request(done))
            await pub.flush()
            await finish(reader, done)
            itron_sim.faults.plan.next_fail = 1
            await pub.send(itron_request(failed))
            await pub.send(itron_request(rejected, connection="not-configured"))
            await pub.flush()
            await finish(reader, failed, rejected)
            itron_sim.timing = Timing(stages=(600.0, 600.0, 600.0))  # this one stays open
            await pub.send(itron_request(running))
            await pub.flush()
            # The vendor holds it QUEUED for the next 600 s.
            await reader.wait_for(lambda o: o.statuses(running)[-1:] == ["QUEUED"], what="queued")
        async with Publisher(settings) as pub:  # no worker: these have no state
            await pub.send(itron_request(unknown))
            await pub.raw(b"not avro at all", key=b"junk-key")
            await pub.flush()
        before = len(await consume_all(settings, settings.topics.requests, 3))
        submitted = submits(itron_sim)
        ids = [done, failed, rejected, running, unknown]

        result = await cli(settings, "replay", "--from", "-1h", "--dry-run")
        assert result.exit_code == 0, result.output
        said = predictions(result.stdout, ids)
        assert said[done].startswith("re-announce file (link valid until 20")
        assert said[failed] == "skip: already finished (FAILED)"
        assert said[running] == "duplicate: still QUEUED, no new job"
        assert said[unknown].startswith("resubmit (no state)")
        # Without the connections file the connection cannot be checked, and it says so.
        assert said[rejected] == "resubmit (was rejected) [connection not checked: give --connections]"
        assert "would fail: not_avro" in result.stdout
        assert "dry run of replay: 6 records" in result.stdout

        conns = write_connections(tmp_path / "conns.json", {"itron": itron_connection(itron_sim.base_url)})
        result = await cli(settings, "replay", "--from", "-1h", "--dry-run", "--connections", str(conns))
        assert result.exit_code == 0, result.output
        said = predictions(result.stdout, ids)
        assert said[rejected].startswith("would fail: unknown_connection: no connection named 'not-configured'")
        assert said[unknown] == "resubmit (no state)"
        assert summary(result.stdout) == {
            "skip": 1, "re-announce": 1, "duplicate": 1, "resubmit": 1, "would fail": 2
        }  # fmt: skip
        # A dry run publishes nothing and calls no vendor.
        assert len(await consume_all(settings, settings.topics.requests, 3)) == before
        assert submits(itron_sim) == submitted


class TestReplay:
    async def test_replaying_a_finished_request_reannounces_its_file_and_creates_no_vendor_job(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        r = rid("again")
        tenant = rid("tenant")
        async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request(r, tenant=tenant))
            await pub.flush()
            first = await finish(reader, r)
            assert first.statuses(r)[-1] == "SUCCEEDED"
            jobs, posts = len(itron_sim.jobs), submits(itron_sim)

            result = await cli(settings, "replay", "--from", "-1h", "--tenant", tenant)
            assert result.exit_code == 0, result.output
            assert "replayed 1 of 1 matching records" in result.stderr
            out = await reader.wait_for(lambda o: len(o.files_for(r)) == 2, what="file re-announced")
        files = out.files_for(r)
        assert [f["reannounced"] for f in files] == [False, True]
        assert files[1]["url"] == files[0]["url"]
        assert out.statuses(r)[-1] == "DUPLICATE" and out.statuses(r).count("SUBMITTED") == 1
        assert (len(itron_sim.jobs), submits(itron_sim)) == (jobs, posts)

    async def test_a_request_outside_its_murmur2_partition_is_replayed_where_its_state_is(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        """Another partitioner put it elsewhere; the worker of that partition holds its state."""
        r, tenant = rid("elsewhere"), rid("tenant")
        elsewhere = (partition_for(r.encode(), 3) + 1) % 3
        async with worker_running(settings, itron_sim), OutputReader(settings) as reader:
            producer = Producer(base_config(settings))
            value = Codec().encode("ExportRequested", itron_request(r, tenant=tenant))
            producer.produce(settings.topics.requests, key=r.encode(), value=value, partition=elsewhere)
            producer.flush(10)
            await finish(reader, r)
            posts = submits(itron_sim)

            result = await cli(settings, "replay", "--from", "-1h", "--tenant", tenant)
            assert result.exit_code == 0, result.output
            out = await reader.wait_for(lambda o: len(o.files_for(r)) == 2, what="file re-announced")
        assert out.files_for(r)[1]["reannounced"] is True
        assert submits(itron_sim) == posts
        replays = [m for m in await consume_all(settings, settings.topics.requests, 3) if m.key() == r.encode()]
        assert {m.partition() for m in replays} == {elsewhere} and len(replays) == 2

    async def test_force_exports_again_under_a_derived_id_with_replay_of(
        self, settings: Settings, itron_sim: ItronSimulator
    ) -> None:
        r = rid("forced")
        async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
            await pub.send(itron_request(r))
            await pub.flush()
            await finish(reader, r)
            posts = submits(itron_sim)

            result = await cli(settings, "replay", "--from", "-1h", "--force", "--tag", "t1")
            assert result.exit_code == 0, result.output
            assert "derived ids end in ~rt1" in result.stderr
            derived = f"{r}~rt1"
            out = await finish(reader, derived)
        assert out.statuses(derived)[-1] == "SUCCEEDED"
        assert len(out.files_for(derived)) == 1 and out.files_for(derived)[0]["reannounced"] is False
        assert submits(itron_sim) == posts + 1
        assert "DUPLICATE" not in out.statuses(r)  # the original is left alone
        shown = await cli(settings, "jobs", "show", derived, "--output", "json")
        data = json.loads(shown.stdout)
        assert data["request"]["replay_of"] == r
        assert data["state_partition"] == partition_for(derived.encode(), 3)


def interrupt_after(n: int) -> Any:
    """A progress hook (``Hooks.advance``) that presses Ctrl-C once ``n`` records were handled."""
    seen = 0

    def advance(_hooks: Any, records: int) -> None:
        nonlocal seen
        seen += records
        if seen >= n:
            raise KeyboardInterrupt

    return advance


class TestResume:
    async def _published(self, settings: Settings, count: int) -> list[str]:
        ids = [rid(f"r{i}") for i in range(count)]
        async with Publisher(settings) as pub:
            for r in ids:
                await pub.send(itron_request(r))
            await pub.flush()
        return ids

    async def test_ctrl_c_saves_the_checkpoint_and_a_rerun_replays_each_record_once(
        self, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = await self._published(settings, 12)
        checkpoint = tmp_path / "day.json"
        args = ["replay", "--from", "-1h", "--checkpoint", str(checkpoint)]

        monkeypatch.setattr(ConsoleHooks, "advance", interrupt_after(5))
        result = await cli(settings, *args)
        assert result.exit_code == 130, result.output
        assert "5 records replayed" in result.stderr and "rerun the same command to continue" in result.stderr
        saved = json.loads(checkpoint.read_text())
        assert saved["replayed"] == 5 and saved["complete"] is False

        monkeypatch.undo()
        result = await cli(settings, *args)
        assert result.exit_code == 0, result.output
        assert "replayed 7 of 7 matching records to their topic (resumed from the checkpoint)" in result.stderr
        result = await cli(settings, *args)
        assert "nothing left to replay" in result.stderr

        records = await consume_all(settings, settings.topics.requests, 3)
        keys = Counter(m.key().decode() for m in records)
        assert keys == Counter({r: 2 for r in ids})  # the original and exactly one replay
        # Each replay went to its original's partition, where the worker keeps its state.
        where = {(m.key(), m.partition()) for m in records}
        assert len(where) == len(ids)

    async def test_resumed_force_run_derives_the_same_ids(self, settings: Settings, tmp_path: Path) -> None:
        ids = await self._published(settings, 6)
        checkpoint = tmp_path / "force.json"
        options = ReplayOptions(from_time="-1h", force=True, checkpoint=checkpoint)

        class Stop(ConsoleHooks):
            advance = interrupt_after(2)

        with pytest.raises(KeyboardInterrupt):
            await replay_requests(settings, options, hooks=Stop(show_outcomes=False))
        tag = json.loads(checkpoint.read_text())["tag"]
        report = await replay_requests(settings, options)  # no --tag: the checkpoint's
        assert report.resumed and report.replayed == 4 and report.tag == tag

        records = await consume_all(settings, settings.topics.requests, 3)
        derived = Counter(m.key().decode() for m in records if b"~r" in m.key())
        assert derived == Counter({f"{r}~r{tag}": 1 for r in ids})

    async def test_a_checkpoint_of_other_arguments_is_refused(self, settings: Settings, tmp_path: Path) -> None:
        await self._published(settings, 2)
        checkpoint = tmp_path / "cp.json"
        await replay_requests(settings, ReplayOptions(from_time="-1h", checkpoint=checkpoint))
        with pytest.raises(CheckpointError, match="other arguments"):
            await replay_requests(settings, ReplayOptions(from_time="-2h", checkpoint=checkpoint))
        result = await cli(settings, "replay", "--from", "-1h", "--vendor", "itron", "--checkpoint", str(checkpoint))
        assert result.exit_code == 1
        assert "was made with other arguments (vendor: None then, 'itron' now)" in result.stderr


class TestRange:
    async def test_offsets_pick_a_partition_and_an_inclusive_end(self, settings: Settings) -> None:
        # Random ids: draw until three land on partition 0 (twelve draws alone miss that
        # about one time in six).
        ids: list[str] = []
        while len(ids) < 12 or sum(partition_for(r.encode(), 3) == 0 for r in ids) < 3:
            ids.append(rid(f"o{len(ids)}"))
        async with Publisher(settings) as pub:
            for r in ids:
                await pub.send(itron_request(r))
            await pub.flush()
        on_zero = [r for r in ids if partition_for(r.encode(), 3) == 0]
        assert len(on_zero) >= 3
        report = await replay_requests(
            settings, ReplayOptions(from_offsets=("0:1",), to_offsets=("0:2",), dry_run=True)
        )
        assert [where for where, _ in report.predictions] == ["0:1", "0:2"]
        assert [o.request_id for _, o in report.predictions] == on_zero[1:3]

    async def test_times_split_the_topic_at_a_moment(self, settings: Settings) -> None:
        before, after = rid("before"), rid("after")
        async with Publisher(settings) as pub:
            await pub.send(itron_request(before))
            await pub.flush()
            moment = int(time.time() * 1000) + 1
            await eventually(lambda: time.time() * 1000 > moment, what="clock past the moment")
            await pub.send(itron_request(after))
            await pub.flush()
        late = await replay_requests(settings, ReplayOptions(from_time=f"@{moment}", dry_run=True))
        early = await replay_requests(settings, ReplayOptions(from_time="-1h", to_time=f"@{moment}", dry_run=True))
        assert [o.request_id for _, o in late.predictions] == [after]
        assert [o.request_id for _, o in early.predictions] == [before]
