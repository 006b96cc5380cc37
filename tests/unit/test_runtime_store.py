"""Finished jobs in the partition store, with no broker: the restore's fold, cold lookups
(duplicates, replays), the write path that evicts finished jobs once their state is
stored, and the sweep of the expiry index. A real RocksDB in a temporary directory; the
rest of the loop's collaborators over a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.runtime_fakes import Collaborators, accepted, metrics
from worker.codec import Codec
from worker.engine.model import FileInfo, JobState, Phase, RequestInfo, RequestReceived, Status, TimerFired
from worker.records import state_from_record, state_to_record
from worker.runtime import sweeper as sweeper_module
from worker.runtime.store_writer import StoreWriter
from worker.runtime.sweeper import Sweeper
from worker.runtime.transactions import Batch, TransactionWriter
from worker.store import Entry, LogFacts, StoreMemory, StoreOptions, StoreSet
from worker.store.loader import StoreLoader
from worker.store.peek import open_header

DAY_MS = 86_400_000
MIB = 1 << 20
CODEC = Codec()
LOG = LogFacts("cluster", "jobs", "topic-id", 0, 0, 1_000_000, DAY_MS)


def encode_in(number: int, state: JobState) -> bytes:
    return encode(state)


def encode(state: JobState) -> bytes:
    return CODEC.encode("JobState", state_to_record(state))


def decode(value: bytes | None) -> JobState:
    assert value is not None
    return state_from_record(CODEC.decode("JobState", value))


class Rig(Collaborators):
    def __init__(self, tmp_path: Path) -> None:
        stores = StoreSet(
            tmp_path, group_id="g", writer="w", memory=StoreMemory(StoreOptions(16 * MIB, 4 * MIB)), clock=lambda: 0
        )
        super().__init__(stores=stores)
        self.stores = stores
        self.store = stores.open(LOG).store
        (incarnation,) = self.partitions.claim({0}).values()
        self.part = self.partitions.current(0, incarnation)
        assert self.part is not None
        self.part.ready = True
        self.writer = StoreWriter(
            partitions=self.partitions, stepper=self.stepper, jobs_topic="jobs", metrics=metrics()
        )
        self.sweeper = Sweeper(
            partitions=self.partitions, stepper=self.stepper, codec=CODEC, clock=self.time.clock, metrics=metrics()
        )
        self.offset = 0

    def now(self) -> int:
        return self.time.now_ms()

    def cold(self, state: JobState) -> None:
        """``state`` committed earlier, and only in the store."""
        self.offset += 1
        self.store.apply(
            [Entry(state.request_id.encode(), encode(state), state.open, state.next_action_at_ms)], self.offset
        )

    def commit(self) -> Batch:
        """What the outbox holds, as a committed batch."""
        taken = self.outbox.take(encode_in, "jobs")
        ends = {}
        for out in taken.records:
            if out.topic == "jobs":
                self.offset += 1
                ends[out.partition] = self.offset
        batch = Batch(taken.records, [], [], [], None, self.partitions.incarnations(), jobs_offsets=ends)
        assert self.writer.committed(batch) == set()
        return batch

    def succeeded(self, request_id: str, *, finished_ago_ms: int = 0, link_ms: int = DAY_MS) -> JobState:
        now = self.now()
        finished = now - finished_ago_ms
        return accepted(request_id, now - DAY_MS).evolve(
            phase=Phase.DONE,
            status=Status.SUCCEEDED,
            vendor_job_id="job-1",
            file=FileInfo("https://files.example/x.csv", "csv", expires_at_ms=finished + link_ms),
            finished_at_ms=finished,
            updated_at_ms=finished,
            next_action_at_ms=finished + link_ms,
        )

    def request(self, request_id: str, *, replay: bool = False) -> RequestReceived:
        return RequestReceived(
            RequestInfo(
                request_id, "acme", "itron", "itron", "{}", self.now(), 0, 99, replay_of=request_id if replay else None
            )
        )

    def statuses(self) -> list[str]:
        return [
            CODEC.decode("JobStatusChanged", o.value)["status"]
            for o in self.outbox.records
            if o.topic == "export.status"
        ]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def latest(records: list[tuple[int, bytes, bytes | None]]) -> dict[bytes, bytes | None]:
    """A consumed batch as ``kafka.Chunk`` hands it over: the last value of each key."""
    return {key: value for _offset, key, value in records}


class TestStoreLoader:
    def test_the_last_value_wins_a_tombstone_deletes_and_the_offset_moves(self, rig: Rig) -> None:
        open_job = accepted("open", rig.now())
        done = rig.succeeded("done")
        folded = StoreLoader(rig.store, CODEC).fold(
            latest(
                [
                    (10, b"done", encode(open_job.evolve(request_id="done"))),
                    (11, b"done", encode(done)),
                    (12, b"open", encode(open_job)),
                    (13, b"gone", encode(done.evolve(request_id="gone"))),
                    (14, b"gone", None),
                ]
            ),
            20,
            records=5,
        )
        assert folded.records == 5 and not folded.unreadable
        assert decode(rig.store.get("done")) == done and rig.store.get("gone") is None
        assert rig.store.open_ids() == ["open"]
        assert rig.store.expiring(done.next_action_at_ms, 10) == [(done.next_action_at_ms, "done")]
        assert rig.store.offset == 20

    def test_a_job_open_in_the_store_that_finishes_in_the_tail_leaves_the_open_index(self, rig: Rig) -> None:
        """A warm restore's loader starts from the o/ entries the store already has."""
        StoreLoader(rig.store, CODEC).fold(latest([(0, b"a", encode(accepted("a", rig.now())))]), 1)
        loader = StoreLoader(rig.store, CODEC)
        loader.fold(latest([(1, b"a", encode(rig.succeeded("a")))]), 2)
        assert rig.store.open_ids() == [] and loader.open_jobs == {}

    def test_it_keeps_each_open_job_as_the_restore_hands_it_over(self, rig: Rig) -> None:
        """The store's open jobs, then every record's change: value, phase, due, vendor, status."""
        kept = accepted("kept", rig.now())
        StoreLoader(rig.store, CODEC).fold(
            latest([(0, b"kept", encode(kept)), (1, b"ends", encode(accepted("ends", rig.now())))]), 2
        )
        loader = StoreLoader(rig.store, CODEC)
        assert not loader.load_open().unreadable
        assert sorted(loader.open_jobs) == [b"ends", b"kept"]
        new = accepted("new", rig.now()).evolve(next_action_at_ms=1234)
        loader.fold(
            latest([(2, b"ends", encode(rig.succeeded("ends"))), (3, b"new", encode(new)), (4, b"kept", None)]), 5
        )
        assert loader.open_jobs == {
            b"new": (encode(new), new.phase, 1234, new.vendor, new.status.value),
        }
        assert rig.store.open_ids() == ["new"]

    def test_a_fold_reads_the_headers_where_records_have_them_and_walks_the_rest(self, rig: Rig) -> None:
        """Headers say what the walk would read: the store and the open jobs come out the
        same with them as without, and a value whose record has none is walked."""
        now = rig.now()
        jobs = [
            accepted("a", now).evolve(next_action_at_ms=now + 1_000),
            accepted("b", now).evolve(phase=Phase.ACTIVE, status=Status.RUNNING, next_action_at_ms=now + 30_000),
            rig.succeeded("c"),
        ]
        batch = latest([(i, job.request_id.encode(), encode(job)) for i, job in enumerate(jobs)])
        heads = {job.request_id.encode(): open_header(job) for job in jobs[:2]}  # "c" has none
        plain = StoreLoader(rig.store, CODEC)
        plain.fold(batch, 3)
        expected = (plain.open_jobs, rig.store.open_ids(), rig.store.expiring(now + DAY_MS * 400, 10))
        headed_store = rig.stores.open(LogFacts("cluster", "jobs", "topic-id", 1, 0, 1_000_000, DAY_MS)).store
        headed = StoreLoader(headed_store, CODEC)
        headed.fold(batch, 3, heads=heads)  # type: ignore[arg-type]
        assert (headed.open_jobs, headed_store.open_ids(), headed_store.expiring(now + DAY_MS * 400, 10)) == expected

    def test_a_fold_believes_a_header_over_the_value_it_travels_with(self, rig: Rig) -> None:
        """The header is what the restore reads (it is never checked against the value:
        that would cost the walk it spares); its due time is the one kept."""
        job = accepted("a", rig.now())
        loader = StoreLoader(rig.store, CODEC)
        loader.fold(latest([(0, b"a", encode(job))]), 1, heads={b"a": open_header(job.evolve(next_action_at_ms=42))})  # type: ignore[dict-item]
        assert loader.open_jobs[b"a"][2] == 42

    def test_open_jobs_split_into_parkable_polls_and_the_rest(self, rig: Rig) -> None:
        """Polling jobs due after the cut may stay encoded; the others are decoded."""
        now = rig.now()
        polling = accepted("later", now).evolve(phase=Phase.ACTIVE, status=Status.RUNNING, vendor_job_id="j")
        later = polling.evolve(next_action_at_ms=now + 60_000)
        soon = polling.evolve(request_id="soon", next_action_at_ms=now + 1_000)
        pending = accepted("pending", now).evolve(next_action_at_ms=now + 60_000)
        loader = StoreLoader(rig.store, CODEC)
        loader.fold(latest([(i, s.request_id.encode(), encode(s)) for i, s in enumerate((later, soon, pending))]), 3)
        parkable, others = loader.split_open(now + 5_000)
        assert parkable == {"later": (encode(later), now + 60_000, later.vendor, later.status.value)}
        assert sorted(others) == [("pending", encode(pending)), ("soon", encode(soon))]

    def test_an_open_entry_without_its_job_is_removed_when_the_open_jobs_are_read(self, rig: Rig) -> None:
        rig.store.apply([(b"a", encode(accepted("a", rig.now())), True, 0)], 1)
        rig.store.db.delete(b"j/a")  # damage: the o/ entry outlives its job
        loader = StoreLoader(rig.store, CODEC)
        assert not loader.load_open().unreadable and loader.open_jobs == {}
        assert rig.store.open_ids() == []

    def test_an_unreadable_open_job_in_a_warm_store_is_dropped_and_reported(self, rig: Rig) -> None:
        rig.store.apply([(b"bad", b"\xc3\x01garbage", True, 0)], 1)
        loader = StoreLoader(rig.store, CODEC)
        assert list(loader.load_open().unreadable) == ["bad"]
        assert loader.open_jobs == {} and rig.store.get("bad") is None and rig.store.open_ids() == []

    def test_an_unreadable_value_is_reported_and_deletes_what_was_stored(self, rig: Rig) -> None:
        loader = StoreLoader(rig.store, CODEC)
        loader.fold(latest([(0, b"a", encode(accepted("a", rig.now())))]), 1)
        folded = loader.fold(latest([(1, b"a", b"\xc3\x01garbage"), (2, b"b", encode(accepted("b", rig.now())))]), 3)
        assert list(folded.unreadable) == ["a"]
        assert rig.store.get("a") is None and rig.store.open_ids() == ["b"]


class TestColdLookups:
    def test_a_duplicate_of_a_cold_finished_job_is_answered_duplicate(self, rig: Rig) -> None:
        done = rig.succeeded("r1")
        rig.cold(done)
        rig.stepper.apply(rig.part, "r1", rig.request("r1"))
        assert rig.statuses() == ["DUPLICATE"]
        assert not [o for o in rig.outbox.records if o.topic == "export.files"]
        stepped = rig.part.jobs["r1"]
        assert stepped.sequence == done.sequence + 1 and rig.outbox.states[(0, "r1")] is stepped

    def test_an_operator_replay_of_a_cold_job_announces_its_file_again(self, rig: Rig) -> None:
        rig.cold(rig.succeeded("r1"))
        rig.stepper.apply(rig.part, "r1", rig.request("r1", replay=True))
        assert rig.statuses() == ["DUPLICATE"]
        assert len([o for o in rig.outbox.records if o.topic == "export.files"]) == 1

    def test_a_cold_job_stepped_without_a_change_to_write_stays_cold(self, rig: Rig) -> None:
        rig.cold(rig.succeeded("r1"))
        rig.stepper.apply(rig.part, "r1", TimerFired())  # not due: the engine only works out the next due time
        assert "r1" not in rig.part.jobs and not rig.outbox.pending

    def test_an_unknown_id_is_a_new_job(self, rig: Rig) -> None:
        rig.stepper.apply(rig.part, "new", rig.request("new"))
        assert rig.part.jobs["new"].status is Status.ACCEPTED


class TestStoreWriter:
    def test_a_committed_finished_job_leaves_memory_and_an_open_one_stays(self, rig: Rig) -> None:
        rig.cold(rig.succeeded("r1"))
        rig.stepper.apply(rig.part, "r1", rig.request("r1"))  # a DUPLICATE: hot until committed
        rig.stepper.apply(rig.part, "new", rig.request("new"))
        rig.commit()
        assert set(rig.part.jobs) == {"new"}
        assert decode(rig.store.get("r1")).sequence == rig.succeeded("r1").sequence + 1
        assert rig.store.open_ids() == ["new"] and rig.store.offset == rig.offset

    def test_a_job_stepped_again_after_the_cut_stays_until_its_newer_state_is_committed(self, rig: Rig) -> None:
        rig.cold(rig.succeeded("r1"))
        rig.stepper.apply(rig.part, "r1", rig.request("r1"))
        taken = rig.outbox.take(encode_in, "jobs")
        rig.stepper.apply(rig.part, "r1", rig.request("r1"))  # a second duplicate, after the cut
        rig.offset += 1
        batch = Batch(taken.records, [], [], [], None, rig.partitions.incarnations(), jobs_offsets={0: rig.offset})
        assert rig.writer.committed(batch) == set()
        assert "r1" in rig.part.jobs
        rig.commit()
        assert "r1" not in rig.part.jobs

    def test_a_batch_of_a_partition_no_longer_owned_is_not_stored(self, rig: Rig) -> None:
        rig.stepper.apply(rig.part, "new", rig.request("new"))
        taken = rig.outbox.take(encode_in, "jobs")
        rig.partitions.claim({0})  # rebuilt meanwhile: the restore reads these records from the topic
        batch = Batch(taken.records, [], [], [], None, {0: rig.part.incarnation}, jobs_offsets={0: 5})
        assert rig.writer.committed(batch) == set() and rig.store.get("new") is None

    def test_a_store_that_cannot_be_written_is_reported(self, rig: Rig) -> None:
        rig.stepper.apply(rig.part, "new", rig.request("new"))
        taken = rig.outbox.take(encode_in, "jobs")
        rig.store.close()
        batch = Batch(taken.records, [], [], [], None, rig.partitions.incarnations(), jobs_offsets={0: 5})
        assert rig.writer.committed(batch) == {0}


class TestSweeper:
    def test_a_job_past_its_retention_is_tombstoned_then_its_entry_goes(self, rig: Rig) -> None:
        old = rig.succeeded("old", finished_ago_ms=8 * DAY_MS, link_ms=-DAY_MS).evolve(
            status=Status.EXPIRED, file=None, next_action_at_ms=rig.now() - DAY_MS
        )
        rig.cold(old)
        rig.sweeper.run()
        assert rig.outbox.states == {(0, "old"): None}
        rig.commit()
        assert rig.store.get("old") is None
        rig.time.advance(1)
        rig.sweeper.run()  # the entry left behind is a ghost now
        assert rig.store.expiring(rig.now(), 10) == []

    def test_an_expired_link_is_published_and_the_job_falls_due_again_at_its_retention(self, rig: Rig) -> None:
        done = rig.succeeded("r1", finished_ago_ms=2 * DAY_MS, link_ms=DAY_MS)
        rig.cold(done)
        rig.sweeper.run()
        assert rig.statuses() == ["EXPIRED"]
        rig.commit()
        stored = decode(rig.store.get("r1"))
        assert stored.status is Status.EXPIRED and "r1" not in rig.part.jobs
        retention_due = done.finished_at_ms + 7 * DAY_MS
        assert rig.store.expiring(retention_due, 10)[-1] == (retention_due, "r1")

    def test_ghost_entries_are_dropped_without_a_step(self, rig: Rig) -> None:
        done = rig.succeeded("r1", finished_ago_ms=2 * DAY_MS, link_ms=DAY_MS)
        rig.cold(done)
        rig.cold(done.evolve(next_action_at_ms=rig.now() + DAY_MS))  # moved on: the first entry is stale
        rig.sweeper.run()
        assert not rig.outbox.pending
        assert rig.store.expiring(rig.now() + 2 * DAY_MS, 10) == [(rig.now() + DAY_MS, "r1")]

    def test_a_hot_job_is_left_to_its_own_commit(self, rig: Rig) -> None:
        done = rig.succeeded("r1", finished_ago_ms=2 * DAY_MS, link_ms=DAY_MS)
        rig.cold(done)
        rig.part.jobs["r1"] = done
        rig.sweeper.run()
        assert not rig.outbox.pending and len(rig.store.expiring(rig.now(), 10)) == 1

    def test_a_sweep_handles_at_most_a_slice(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sweeper_module, "SWEEP_SLICE", 3)
        for i in range(7):
            rig.cold(rig.succeeded(f"r{i}", finished_ago_ms=2 * DAY_MS, link_ms=DAY_MS))
        rig.sweeper.run()
        assert len(rig.outbox.states) == 3
        rig.sweeper.run()  # a full slice: the next sweep goes on at once, past what was stepped
        assert len(rig.outbox.states) == 6


class TestTrimmedBodies:
    def active(self, rig: Rig, request_id: str) -> JobState:
        body = '{"filetype":"Csv","tokens":{"ServicePoint":"' + "9" * 400 + '"}}'
        return accepted(request_id, rig.now()).evolve(
            job_json=body, phase=Phase.ACTIVE, status=Status.RUNNING, vendor_job_id="job-1", sequence=3
        )

    def test_a_committed_accepted_job_keeps_only_its_view_in_memory(self, rig: Rig) -> None:
        state = self.active(rig, "r1")
        rig.part.jobs["r1"] = state
        rig.outbox.put_state(0, "r1", state)
        rig.commit()
        kept = rig.part.jobs["r1"]
        assert (kept.job_json, kept.body_in_store) == ('{"filetype":"Csv"}', True)
        assert decode(rig.store.get("r1")).job_json == state.job_json
        other = self.active(rig, "r2")
        rig.part.jobs["r2"] = other
        rig.outbox.put_state(0, "r2", other)
        rig.commit()
        assert rig.part.jobs["r2"].job_json is kept.job_json  # interned: one string for equal views

    async def test_every_record_of_a_trimmed_job_carries_its_full_body(self, rig: Rig) -> None:
        state = self.active(rig, "r1")
        rig.part.jobs["r1"] = state
        rig.outbox.put_state(0, "r1", state)
        rig.commit()
        moved_on = rig.part.jobs["r1"].evolve(vendor_status="Completed", sequence=4)
        rig.outbox.put_state(0, "r1", moved_on)
        writer = TransactionWriter(
            outbox=rig.outbox,
            partitions=rig.partitions,
            codec=CODEC,
            jobs_topic="jobs",
            metrics=metrics(),
            stores=rig.stores,
        )
        batch = await writer.cut()
        assert batch is not None
        (record,) = batch.outgoing
        written = decode(record.value)
        assert (written.job_json, written.sequence, written.body_in_store) == (state.job_json, 4, False)

    def test_a_job_that_is_not_accepted_yet_keeps_its_body(self, rig: Rig) -> None:
        pending = accepted("r1", rig.now()).evolve(job_json='{"filetype":"Csv","tokens":{}}')
        rig.part.jobs["r1"] = pending
        rig.outbox.put_state(0, "r1", pending)
        rig.commit()
        assert rig.part.jobs["r1"] is pending
