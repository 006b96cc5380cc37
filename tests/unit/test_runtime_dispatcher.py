"""The call dispatcher: who is admitted when, limits and pause, and calls in flight
(a fake clock and a fake adapter; no broker, no HTTP)."""

from __future__ import annotations

import asyncio
import math

from tests.unit.runtime_fakes import Collaborators, FakeAdapter, accepted, call_for, connection
from worker.control import ControlState
from worker.engine.model import CallFailed, CallKind, Event, JobState, Phase, PollAnswered, Status, TimerFired
from worker.errors import RateLimited
from worker.limits import DEFAULT_MAX_RETRY_AFTER_S
from worker.runtime.calls import DEFAULT_RATE_LIMIT_WAIT_S
from worker.runtime.connections import Connection
from worker.runtime.dispatcher import INTENTS_PER_SLOT
from worker.runtime.mailbox import CallAnswered
from worker.runtime.outbox import Outbox
from worker.runtime.partitions import OwnedPartition
from worker.runtime.stepper import Stepper
from worker.testing import eventually


class Rig(Collaborators):
    """A dispatcher over one ready partition, with a recording step function."""

    def __init__(self, *, max_concurrency: int = 2, adapter: FakeAdapter | None = None) -> None:
        super().__init__(connection(adapter=adapter or FakeAdapter(), max_concurrency=max_concurrency))
        self.incarnation = self.partitions.claim({0})[0]
        self.part.ready = True
        self.lane = self.dispatcher.lanes[self.conn.name]
        self.stepped: list[tuple[str, Event, bool]] = []  # (request id, event, holds a slot)

    @property
    def part(self) -> OwnedPartition:
        return self.partitions[0]

    def job(self, request_id: str, phase: Phase, *, due_in_ms: int = 0) -> JobState:
        now = self.time.now_ms()
        state = accepted(request_id, now).evolve(phase=phase, next_action_at_ms=now + due_in_ms)
        if phase is Phase.ACTIVE:
            state = state.evolve(vendor_job_id=f"job-{request_id}", status=Status.RUNNING)
        self.part.jobs[request_id] = state
        self.dispatcher.schedule(state.next_action_at_ms, 0, request_id)
        return state

    def step(self, part: OwnedPartition, request_id: str, event: Event, slot: Connection | None) -> None:
        self.stepped.append((request_id, event, slot is not None))
        state = part.jobs[request_id]
        if state.phase is Phase.PENDING and isinstance(event, TimerFired):
            self.lane.intents += 1  # the engine writes a SUBMITTING intent; its call waits for the commit
        # The job moves on (as the engine's step would): its queue and timer entries go stale.
        part.jobs[request_id] = state.evolve(next_action_at_ms=state.next_action_at_ms + 60_000)

    def fire(self) -> list[str]:
        before = len(self.stepped)
        self.dispatcher.fire_timers(self.step)
        return [rid for rid, _, _ in self.stepped[before:]]


class TestAdmission:
    def test_polls_of_jobs_at_the_vendor_go_before_new_submits(self) -> None:
        rig = Rig()
        rig.job("new", Phase.PENDING)
        rig.job("old", Phase.ACTIVE)
        assert rig.fire() == ["old", "new"]
        assert [slot for _, _, slot in rig.stepped] == [True, False]  # a submit takes its slot later

    def test_no_more_polls_run_than_the_connection_allows_and_the_rest_wait_in_line(self) -> None:
        rig = Rig(max_concurrency=2)
        for rid in ("a", "b", "c"):
            rig.job(rid, Phase.ACTIVE)
        assert rig.fire() == ["a", "b"]
        assert rig.fire() == []  # still at capacity
        rig.dispatcher.release_slot(rig.conn)
        assert rig.fire() == ["c"]

    def test_submits_waiting_for_their_intent_are_bounded_per_call_slot(self) -> None:
        rig = Rig(max_concurrency=1)
        for i in range(INTENTS_PER_SLOT + 2):
            rig.job(f"s{i}", Phase.PENDING)
        assert len(rig.fire()) == INTENTS_PER_SLOT
        assert rig.fire() == []
        rig.lane.intents -= 1  # one intent's call started
        assert rig.fire() == [f"s{INTENTS_PER_SLOT}"]

    def test_a_stale_timer_of_a_job_that_moved_on_does_nothing(self) -> None:
        rig = Rig()
        state = rig.job("a", Phase.ACTIVE)
        rig.part.jobs["a"] = state.evolve(next_action_at_ms=state.next_action_at_ms + 5_000)
        assert rig.fire() == []

    def test_a_partition_being_handed_over_runs_no_new_calls(self) -> None:
        rig = Rig()
        rig.job("a", Phase.ACTIVE)
        rig.partitions.start_revoking({0})
        assert rig.fire() == []

    def test_a_finished_job_s_timer_is_stepped_without_a_slot(self) -> None:
        rig = Rig(max_concurrency=1)
        rig.job("busy", Phase.ACTIVE)
        rig.fire()
        rig.job("done", Phase.DONE)
        assert rig.fire() == ["done"]
        assert rig.stepped[-1][2] is False

    def test_a_job_whose_connection_is_gone_fails_instead_of_waiting(self) -> None:
        rig = Rig()
        state = rig.job("orphan", Phase.PENDING)
        rig.part.jobs["orphan"] = state.evolve(connection="removed")
        assert rig.fire() == ["orphan"]
        event = rig.stepped[-1][1]
        assert isinstance(event, CallFailed) and event.error.code == "unknown_connection"

    def test_nothing_fires_while_shutting_down(self) -> None:
        rig = Rig()
        rig.job("a", Phase.ACTIVE)
        rig.dispatcher.stopping = True
        assert rig.fire() == []


class TestPause:
    def test_a_paused_connection_parks_submits_but_keeps_polling(self) -> None:
        rig = Rig()
        rig.dispatcher.apply_control(ControlState(frozenset({"connection:itron"})))
        rig.job("new", Phase.PENDING)
        rig.job("old", Phase.ACTIVE)
        assert rig.fire() == ["old"]
        assert rig.lane.parked == [(0, "new")]

    def test_resuming_makes_parked_jobs_due_now(self) -> None:
        rig = Rig()
        rig.dispatcher.apply_control(ControlState(frozenset({"vendor:itron"})))
        rig.job("new", Phase.PENDING)
        rig.fire()
        rig.time.advance(30)
        rig.dispatcher.apply_control(ControlState(frozenset()))
        assert not rig.lane.paused and rig.lane.parked == []
        assert rig.part.jobs["new"].next_action_at_ms == rig.time.now_ms()
        assert rig.fire() == ["new"]


class TestCalls:
    async def test_an_answer_is_posted_to_the_mailbox_and_the_slot_given_back(self) -> None:
        rig = Rig()
        state = rig.job("a", Phase.ACTIVE)
        rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        assert rig.lane.limiter.in_flight == 1
        report = await asyncio.wait_for(rig.mailbox.get(), 5)
        assert isinstance(report, CallAnswered) and report.request_id == "a"
        assert report.incarnation == rig.incarnation
        assert rig.lane.limiter.in_flight == 0

    async def test_a_429_holds_back_every_call_of_the_connection_for_its_retry_after(self) -> None:
        adapter = FakeAdapter()
        adapter.answers[CallKind.POLL] = RateLimited("429", retry_after=30.0)
        rig = Rig(adapter=adapter, max_concurrency=4)  # halved by the 429: still two polls at once
        state = rig.job("a", Phase.ACTIVE)
        rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        await asyncio.wait_for(rig.mailbox.get(), 5)
        rig.job("b", Phase.ACTIVE)
        rig.job("c", Phase.PENDING)
        assert rig.fire() == []
        rig.time.advance(30)
        assert rig.fire() == ["a", "b", "c"]

    async def test_a_429_blocks_the_connection_no_longer_than_the_cap(self) -> None:
        """A Retry-After of 30 years (or infinity, from an adapter that let it through)
        holds the connection for EXPORT_WORKER_MAX_RETRY_AFTER_S at most (600 s by
        default), or the default wait when it is no delay at all."""
        for retry_after, held_s in ((1e9, DEFAULT_MAX_RETRY_AFTER_S), (math.inf, DEFAULT_RATE_LIMIT_WAIT_S)):
            adapter = FakeAdapter()
            adapter.answers[CallKind.POLL] = RateLimited("429", retry_after=retry_after)
            rig = Rig(adapter=adapter, max_concurrency=4)
            state = rig.job("a", Phase.ACTIVE)
            rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
            await asyncio.wait_for(rig.mailbox.get(), 5)
            rig.job("b", Phase.ACTIVE)
            assert rig.fire() == []
            rig.time.advance(held_s)
            assert rig.fire() == ["a", "b"]

    async def test_a_call_of_a_partition_no_longer_current_never_starts_and_gives_its_intent_back(self) -> None:
        adapter = FakeAdapter()
        rig = Rig(adapter=adapter)
        call = call_for(rig.job("a", Phase.SUBMITTING), rig.conn, CallKind.SUBMIT, incarnation=rig.incarnation)
        rig.dispatcher.hold_intent(call)
        assert rig.lane.intents == 1
        rig.partitions.claim({0})  # rebuilt meanwhile: a new incarnation
        rig.dispatcher.dispatch(call)
        assert rig.lane.intents == 0 and rig.lane.limiter.in_flight == 0 and adapter.calls == []

    async def test_a_call_without_a_free_slot_waits_and_starts_when_one_is_free(self) -> None:
        adapter = FakeAdapter()
        adapter.gate = asyncio.Event()
        rig = Rig(max_concurrency=1, adapter=adapter)
        first = call_for(rig.job("a", Phase.SUBMITTING), rig.conn, CallKind.SUBMIT, incarnation=rig.incarnation)
        second = call_for(rig.job("b", Phase.SUBMITTING), rig.conn, CallKind.SUBMIT, incarnation=rig.incarnation)
        rig.dispatcher.dispatch_all([first, second])
        await eventually(lambda: len(adapter.calls) == 1, timeout=5, what="first call started")
        assert rig.dispatcher.busy
        adapter.gate.set()
        await asyncio.wait_for(rig.mailbox.get(), 5)
        rig.dispatcher.retry_waiting_calls()
        await asyncio.wait_for(rig.mailbox.get(), 5)
        assert [rid for _, rid in adapter.calls] == ["a", "b"]

    async def test_waiting_calls_are_retried_in_order_and_a_full_lane_is_asked_once(self) -> None:
        adapter = FakeAdapter()
        adapter.gate = asyncio.Event()
        rig = Rig(max_concurrency=2, adapter=adapter)
        calls = [
            call_for(rig.job(f"r{i}", Phase.SUBMITTING), rig.conn, CallKind.SUBMIT, incarnation=rig.incarnation)
            for i in range(6)
        ]
        rig.dispatcher.dispatch_all(calls)
        await eventually(lambda: len(adapter.calls) == 2, timeout=5, what="two calls started")
        asked = 0
        acquire = rig.lane.limiter.try_acquire

        def counted(now: float) -> bool:
            nonlocal asked
            asked += 1
            return acquire(now)

        rig.lane.limiter.try_acquire = counted  # type: ignore[method-assign]
        rig.dispatcher.retry_waiting_calls()  # both slots still held
        assert asked == 1 and len(adapter.calls) == 2
        adapter.gate.set()
        for _ in range(6):
            await asyncio.wait_for(rig.mailbox.get(), 5)
            rig.dispatcher.retry_waiting_calls()
        assert [rid for _, rid in adapter.calls] == [f"r{i}" for i in range(6)]

    async def test_forgetting_a_partition_cancels_its_calls_and_drops_its_queued_work(self) -> None:
        adapter = FakeAdapter()
        adapter.gate = asyncio.Event()
        rig = Rig(max_concurrency=1, adapter=adapter)
        rig.dispatcher.dispatch(call_for(rig.job("a", Phase.ACTIVE), rig.conn, CallKind.POLL, incarnation=1))
        await eventually(lambda: adapter.calls, timeout=5, what="call started")
        rig.job("b", Phase.ACTIVE)
        rig.fire()  # no slot: waits in line
        assert rig.lane.waiting
        rig.partitions.drop({0})
        rig.dispatcher.forget({0})
        await eventually(lambda: rig.lane.limiter.in_flight == 0, timeout=5, what="slot given back")
        assert not rig.lane.waiting and rig.dispatcher.next_due_ms() is None and rig.mailbox.empty()


class TestWithTheStepper:
    """The stepper and the dispatcher together: when a vendor call may start."""

    def rig(self) -> tuple[Rig, Outbox, Stepper]:
        rig = Rig()
        return rig, rig.outbox, rig.stepper

    async def test_a_submit_waits_for_its_intent_to_be_committed(self) -> None:
        rig, outbox, stepper = self.rig()
        rig.job("a", Phase.PENDING)
        rig.dispatcher.fire_timers(stepper.apply)
        assert rig.part.jobs["a"].phase is Phase.SUBMITTING
        assert [c.request_id for c in outbox.calls] == ["a"] and rig.lane.intents == 1
        assert (0, "a") in outbox.states  # the intent, written before the call
        assert rig.lane.limiter.in_flight == 0  # no slot held through the commit

    async def test_a_poll_starts_at_once_with_the_slot_it_was_admitted_with(self) -> None:
        rig, outbox, stepper = self.rig()
        rig.job("a", Phase.ACTIVE)
        rig.dispatcher.fire_timers(stepper.apply)
        assert outbox.calls == [] and rig.lane.limiter.in_flight == 1
        report = await asyncio.wait_for(rig.mailbox.get(), 5)
        assert isinstance(report, CallAnswered) and rig.lane.limiter.in_flight == 0

    async def test_a_step_that_calls_no_vendor_gives_its_slot_back(self) -> None:
        rig, _, stepper = self.rig()
        state = rig.job("a", Phase.ACTIVE)
        assert rig.lane.limiter.try_acquire(rig.time.clock.monotonic())
        # A job that finished while it waited for its slot: its timer step calls no vendor.
        rig.part.jobs["a"] = state.evolve(phase=Phase.DONE, status=Status.SUCCEEDED, finished_at_ms=1)
        stepper.apply(rig.part, "a", TimerFired(), rig.conn)
        assert rig.lane.limiter.in_flight == 0

    async def test_a_paused_connection_resubmits_nothing_until_it_resumes(self) -> None:
        """A restored SUBMITTING job whose vendor cannot be asked would resubmit: not
        while its connection is paused (no intent written, no call, its slot given back)."""
        rig, outbox, stepper = self.rig()
        rig.dispatcher.apply_control(ControlState(frozenset({"connection:itron"})))
        state = rig.job("lost", Phase.SUBMITTING)
        rig.dispatcher.fire_timers(stepper.apply)
        assert rig.part.jobs["lost"] == state
        assert outbox.states == {} and outbox.calls == [] and rig.lane.limiter.in_flight == 0
        assert rig.lane.parked == [(0, "lost")]
        rig.dispatcher.apply_control(ControlState(frozenset()))
        rig.dispatcher.fire_timers(stepper.apply)
        resubmit = rig.part.jobs["lost"]
        assert resubmit.submit_attempt == state.submit_attempt + 1 and resubmit.possible_duplicate
        assert [c.request_id for c in outbox.calls] == ["lost"]


class TestWithdraw:
    def test_a_withdrawn_submit_puts_the_job_back_as_it_was_due_now(self) -> None:
        rig = Rig()
        pending = rig.job("a", Phase.PENDING)
        rig.dispatcher.fire_timers(rig.stepper.apply)
        (call,) = rig.outbox.calls
        assert call.withdrawable and call.before == pending
        rig.time.advance(5)
        rig.stepper.withdraw(rig.part, call)
        back = rig.part.jobs["a"]
        assert back.phase is Phase.PENDING and back.submit_attempt == pending.submit_attempt
        assert back.next_action_at_ms == rig.time.now_ms()
        assert rig.outbox.states[(0, "a")] == back  # written with the next transaction
        assert rig.dispatcher.next_due_ms() == rig.time.now_ms()

    def test_only_submits_can_be_withdrawn(self) -> None:
        rig = Rig()
        state = rig.job("a", Phase.ACTIVE)
        assert not call_for(state, rig.conn, CallKind.POLL).withdrawable


class TestAdaptiveConcurrency:
    async def test_a_429_halves_the_calls_in_flight_and_good_answers_grow_them_back(self) -> None:
        adapter = FakeAdapter()
        adapter.answers[CallKind.POLL] = RateLimited("429", retry_after=1.0)
        rig = Rig(adapter=adapter, max_concurrency=8)
        state = rig.job("a", Phase.ACTIVE)
        rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        await asyncio.wait_for(rig.mailbox.get(), 5)
        gauge = rig.metrics.registry.get_sample_value
        assert rig.lane.limiter.max_concurrency == 4
        assert gauge("export_worker_adaptive_concurrency", {"connection": rig.conn.name}) == 4
        adapter.answers[CallKind.POLL] = PollAnswered("Processing", Status.RUNNING)
        for i in range(40):
            rig.time.advance(1.0)  # past the 429's Retry-After, and a token a call
            state = rig.job(f"ok-{i}", Phase.ACTIVE)
            rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
            await asyncio.wait_for(rig.mailbox.get(), 5)
        assert rig.lane.limiter.max_concurrency == 8


class TestFleetBlocks:
    async def test_a_429_is_told_to_the_fleet_once_per_block_not_once_per_answer(self) -> None:
        adapter = FakeAdapter()
        adapter.answers[CallKind.POLL] = RateLimited("429", retry_after=30.0)
        rig = Rig(adapter=adapter, max_concurrency=4)
        told: list[tuple[str, int, str]] = []
        rig.dispatcher.announce = lambda connection, until, reason: told.append((connection, until, reason))
        for rid in ("a", "b", "c"):  # three 429s in the same second
            state = rig.job(rid, Phase.ACTIVE)
            rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        for _ in range(3):
            await asyncio.wait_for(rig.mailbox.get(), 5)
        assert told == [(rig.conn.name, rig.time.now_ms() + 30_000, "rate_limited: the vendor asked to wait 30 s")]

    def test_a_block_from_the_fleet_holds_every_call_until_it_ends(self) -> None:
        rig = Rig()
        rig.dispatcher.apply_control(ControlState(frozenset(), {rig.conn.name: rig.time.now_ms() + 20_000}))
        rig.job("a", Phase.ACTIVE)
        rig.job("b", Phase.PENDING)
        assert rig.fire() == []
        rig.time.advance(19.9)
        assert rig.fire() == []
        rig.time.advance(0.2)
        assert rig.fire() == ["a", "b"]

    def test_a_fleet_block_is_cut_to_this_workers_cap_and_a_past_one_does_nothing(self) -> None:
        rig = Rig()
        rig.dispatcher.apply_control(ControlState(frozenset(), {rig.conn.name: rig.time.now_ms() - 1}))
        rig.job("a", Phase.ACTIVE)
        assert rig.fire() == ["a"]
        far = rig.time.now_ms() + 10**12  # 30 years, from a hostile or broken writer
        rig.dispatcher.apply_control(ControlState(frozenset(), {rig.conn.name: far}))
        rig.job("b", Phase.ACTIVE)
        assert rig.fire() == []
        rig.time.advance(DEFAULT_MAX_RETRY_AFTER_S)
        assert rig.fire() == ["b"]

    async def test_a_block_the_fleet_already_knows_is_not_told_again(self) -> None:
        adapter = FakeAdapter()
        adapter.answers[CallKind.POLL] = RateLimited("429", retry_after=5.0)
        rig = Rig(adapter=adapter)
        told: list[int] = []
        rig.dispatcher.announce = lambda _connection, until, _reason: told.append(until)
        state = rig.job("a", Phase.ACTIVE)
        rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        # Before its answer comes back, another worker's longer block arrives.
        rig.dispatcher.apply_control(ControlState(frozenset(), {rig.conn.name: rig.time.now_ms() + 20_000}))
        await asyncio.wait_for(rig.mailbox.get(), 5)
        assert told == []
        rig.time.advance(20)  # that block is over: the next 429 is news again
        state = rig.job("b", Phase.ACTIVE)
        rig.dispatcher.dispatch(call_for(state, rig.conn, CallKind.POLL, incarnation=rig.incarnation))
        await asyncio.wait_for(rig.mailbox.get(), 5)
        assert told == [rig.time.now_ms() + 5_000]
