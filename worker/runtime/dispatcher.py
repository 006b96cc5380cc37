"""When each job's next vendor call runs: timers, per-connection queues and limits,
pause, and the calls in flight.

Due jobs wait in their connection's lane until it has capacity. Jobs already at the
vendor (polls, reconciles, cancels) go before new submits, and a submit takes its call
slot only once its SUBMITTING intent is durable, so slots are not held through a commit.
Calls run as tasks that post their answer to the mailbox; they never touch job state.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from worker.budgets import AdaptiveLimit, BudgetMode, FleetBlocks, Ownership, share_of
from worker.control import ControlState
from worker.engine.model import CallFailed, CallKind, ErrorInfo, Event, JobState, Phase, TimerFired
from worker.errors import RateLimited
from worker.limits import DEFAULT_MAX_RETRY_AFTER_S
from worker.observability import Metrics
from worker.runtime.calls import Call, connection_wait_s, run_call
from worker.runtime.clients import Clock
from worker.runtime.connections import Connection
from worker.runtime.exclusive_gate import ExclusiveGate
from worker.runtime.mailbox import CallAnswered, Mailbox
from worker.runtime.partitions import OwnedPartition, Partitions
from worker.scheduler import Limiter, TimerHeap
from worker.tracing import Tracing

log = structlog.get_logger("export_worker")

# Due timers handled per loop turn, so one turn never runs long under a burst.
TIMERS_PER_TURN = 5_000
# A job waiting for its exclusive kind is looked at again this often, even unwoken.
EXCLUSIVE_RECHECK_MS = 5_000
# Submits whose intent may wait for a commit or a slot, per call slot of the connection:
# bounded, so a crash leaves few intents the next owner must reconcile.
INTENTS_PER_SLOT = 4

# Steps a due job: (partition, request id, event, the connection whose slot it holds).
StepFn = Callable[[OwnedPartition, str, Event, Connection | None], None]
QueueEntry = tuple[int, str, int]  # (partition, request_id, due_ms)


@dataclass
class Lane:
    """One connection's capacity and the jobs waiting for it."""

    limiter: Limiter
    adaptive: AdaptiveLimit
    # Due jobs waiting for capacity, oldest first.
    waiting: deque[QueueEntry] = field(default_factory=deque)
    waiting_submits: deque[QueueEntry] = field(default_factory=deque)
    parked: list[tuple[int, str]] = field(default_factory=list)  # PENDING jobs held by a pause
    intents: int = 0  # submits whose intent is written but whose call has not started

    @property
    def paused(self) -> bool:
        return self.limiter.paused


class CallDispatcher:
    def __init__(
        self,
        connections: dict[str, Connection],
        partitions: Partitions,
        mailbox: Mailbox,
        clock: Clock,
        metrics: Metrics,
        *,
        max_wait_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        budget_mode: BudgetMode = BudgetMode.FLEET,
    ) -> None:
        self._connections = connections
        self.budget_mode = budget_mode
        self.ownership = Ownership(0, 0)  # until the partition count is known: the whole budget
        self.blocks = FleetBlocks()
        self.exclusive = ExclusiveGate(connections)
        # Tells the fleet about a block this worker got: (connection, until epoch ms, reason).
        self.announce: Callable[[str, int, str], None] | None = None
        self._max_wait_s = max_wait_s  # the longest a 429 blocks a connection
        self._partitions = partitions
        self._mailbox = mailbox
        self._clock = clock
        self._metrics = metrics
        self.lanes: dict[str, Lane] = {}
        self._timers = TimerHeap()
        self._waiting_calls: list[Call] = []  # ready to start, waiting for a slot
        self._in_flight: dict[int, set[asyncio.Task[None]]] = {}
        self.stopping = False  # shutting down: no new timers fire
        self.tracing = Tracing()  # the worker sets its own (off unless configured)

    def open(self, connections: dict[str, Connection]) -> None:
        for name, conn in connections.items():
            self.lanes[name] = Lane(
                Limiter(max_concurrency=conn.config.max_concurrency, rate_per_s=conn.config.rate_per_s),
                AdaptiveLimit(conn.config.max_concurrency),
            )
        self.reshare(self.ownership)

    def reshare(self, ownership: Ownership) -> None:
        """Size every connection's lane to this worker's share of its fleet budget."""
        self.ownership = ownership
        now = self._clock.monotonic()
        for name, lane in self.lanes.items():
            config = self._connections[name].config
            share = share_of(config.rate_per_s, config.max_concurrency, ownership, self.budget_mode)
            lane.adaptive.set_ceiling(share.max_concurrency)
            lane.limiter.resize(now, lane.adaptive.calls, share.rate_per_s)
            self._metrics.adaptive_concurrency.labels(name).set(lane.adaptive.calls)
            self._metrics.budget_rate.labels(name, "fleet").set(config.rate_per_s)
            self._metrics.budget_rate.labels(name, "worker").set(share.rate_per_s)
            self._metrics.budget_concurrency.labels(name, "fleet").set(config.max_concurrency)
            self._metrics.budget_concurrency.labels(name, "worker").set(share.max_concurrency)

    # ---- state the loop asks about --------------------------------------------------

    @property
    def busy(self) -> bool:
        """Calls running or waiting to: the loop should come back soon."""
        return self.queued or any(self._in_flight.values())

    @property
    def queued(self) -> bool:
        """Calls ready to start that wait for a free slot (an answer frees one)."""
        return bool(self._waiting_calls) or any(lane.waiting or lane.waiting_submits for lane in self.lanes.values())

    def next_due_ms(self) -> int | None:
        return self._timers.next_due_ms()

    # ---- timers and admission --------------------------------------------------------

    def schedule(self, due_ms: int, partition: int, request_id: str) -> None:
        self._timers.schedule(due_ms, partition, request_id)

    def schedule_many(self, entries: list[tuple[int, int, str]]) -> None:
        """(due ms, partition, request id) entries, at once."""
        self._timers.schedule_many(entries)

    def fire_timers(self, step: StepFn) -> None:
        """Hand due jobs to their connection's lane; admit as many as it has capacity for."""
        if self.stopping:
            return
        now_ms = self._clock.now_ms()
        for due, number, request_id in self._timers.pop_due(now_ms, TIMERS_PER_TURN):
            part = self._partitions.get(number)
            if part is None or not part.active:
                continue
            state = part.jobs.get(request_id)
            if state is None or state.next_action_at_ms != due:
                continue  # stale entry: the job moved on
            if state.phase is Phase.DONE:
                step(part, request_id, TimerFired(), None)  # expiry or retention: no vendor call
                continue
            lane = self.lanes.get(state.connection)
            if lane is None:
                step(part, request_id, _no_connection(state), None)
                continue
            (lane.waiting_submits if state.phase is Phase.PENDING else lane.waiting).append((number, request_id, due))
        mono = self._clock.monotonic()
        for name, lane in self.lanes.items():
            conn = self._connections[name]
            self._admit_calls(conn, lane, step, now_ms, mono)
            self._admit_submits(lane, step, now_ms, mono)

    def _due(self, entry: QueueEntry) -> OwnedPartition | None:
        """The partition of a queued job, if it is still owned and the job still due then."""
        number, request_id, due = entry
        part = self._partitions.get(number)
        if part is None or part.revoking:
            return None
        state = part.jobs.get(request_id)
        if state is None or state.next_action_at_ms != due:
            return None
        return part

    def _admit_calls(self, conn: Connection, lane: Lane, step: StepFn, now_ms: int, mono: float) -> None:
        queue = lane.waiting
        while queue:
            part = self._due(queue[0])
            if part is None:
                queue.popleft()  # moved on, or its partition is gone
                continue
            if not lane.limiter.try_acquire(mono):
                return  # at capacity, rate-limited or blocked by a 429: wait in line
            _, request_id, due = queue.popleft()
            self._metrics.poll_lateness.observe(max(0, now_ms - due) / 1000)
            step(part, request_id, TimerFired(), conn)

    def _admit_submits(self, lane: Lane, step: StepFn, now_ms: int, mono: float) -> None:
        queue = lane.waiting_submits
        while queue:
            part = self._due(queue[0])
            if part is None:
                queue.popleft()
                continue
            if lane.limiter.paused:
                number, request_id, _ = queue.popleft()
                lane.parked.append((number, request_id))
                continue
            if not self.exclusive.admit(part, queue[0][1]):
                # Waits for its kind: woken when the job holding it ends, and looked at
                # again now and then all the same.
                number, request_id, _ = queue.popleft()
                self._due_again(part, request_id, now_ms + EXCLUSIVE_RECHECK_MS)
                continue
            # A submit takes its call slot only once its intent is durable, so slots are
            # not held through a commit; the intents waiting for one are bounded.
            if lane.intents >= INTENTS_PER_SLOT * lane.limiter.max_concurrency or mono < lane.limiter.blocked_until:
                return
            _, request_id, due = queue.popleft()
            self._metrics.poll_lateness.observe(max(0, now_ms - due) / 1000)
            step(part, request_id, TimerFired(), None)

    # ---- pause and resume ------------------------------------------------------------

    def apply_control(self, control: ControlState) -> None:
        now_ms, mono = self._clock.now_ms(), self._clock.monotonic()
        for name, lane in self.lanes.items():
            conn = self._connections[name]
            until = control.blocks.get(name)
            if until is not None:
                self.blocks.learn(name, until)
                # Another worker's clock says when; never longer than this one honours.
                wait_s = min(self._max_wait_s, (until - now_ms) / 1000)
                if wait_s > 0 and mono + wait_s > lane.limiter.blocked_until + 0.001:
                    lane.limiter.block(mono, wait_s)
                    self._metrics.connection_blocks.labels(name, "fleet").inc()
                    log.info("connection blocked by the fleet", connection=name, seconds=round(wait_s, 3))
            paused = control.is_paused(name, conn.config.vendor)
            if paused and not lane.limiter.paused:
                lane.limiter.paused = True
                log.warning("connection paused: no new submits, open jobs keep polling", connection=name)
            elif not paused and lane.limiter.paused:
                self.resume(name)
                log.warning("connection resumed", connection=name)

    def job_ended(self, part: OwnedPartition, request_id: str, before: JobState) -> None:
        """A job left the vendor: the next job waiting for its exclusive kind is due now."""
        woken = self.exclusive.ended(part, request_id, before)
        if woken is not None:
            self._due_again(part, woken, self._clock.now_ms())

    def _due_again(self, part: OwnedPartition, request_id: str, at_ms: int) -> None:
        """A waiting job's next look (in memory: its committed state stays as it was)."""
        part.jobs[request_id] = replace(part.jobs[request_id], next_action_at_ms=at_ms)
        self._timers.schedule(at_ms, part.number, request_id)

    def paused(self, connection: Connection) -> bool:
        return self.lanes[connection.name].limiter.paused

    def park(self, connection: Connection, partition: int, request_id: str) -> None:
        """Hold a job that would submit on a paused connection until it resumes."""
        self.lanes[connection.name].parked.append((partition, request_id))

    def resume(self, connection: str) -> None:
        """Unpause a connection: its parked jobs are due now."""
        lane = self.lanes[connection]
        lane.limiter.paused = False
        now = self._clock.now_ms()
        for number, request_id in lane.parked:
            part = self._partitions.get(number)
            state = part.jobs.get(request_id) if part else None
            if part is not None and state is not None and state.phase in (Phase.PENDING, Phase.SUBMITTING):
                part.jobs[request_id] = replace(state, next_action_at_ms=now)
                self._timers.schedule(now, number, request_id)
        lane.parked.clear()

    # ---- calls -----------------------------------------------------------------------

    def hold_intent(self, call: Call) -> None:
        """``call`` waits for its intent to be committed; count it against the lane's bound."""
        if not call.has_slot:
            call.intent = True
            self.lanes[call.connection.name].intents += 1

    def release_slot(self, connection: Connection) -> None:
        self.lanes[connection.name].limiter.release()

    def dispatch(self, call: Call) -> None:
        """Start ``call`` now if its partition is still current and it can have a slot."""
        part = self._partitions.current(call.partition, call.incarnation)
        if part is None or part.revoking:
            self.abandon(call)
            return
        lane = self.lanes[call.connection.name]
        if not call.has_slot:
            if not lane.limiter.try_acquire(self._clock.monotonic()):
                self._waiting_calls.append(call)
                return
            call.has_slot = True
        self._started(call)
        task = asyncio.create_task(self._run(call, lane))
        tasks = self._in_flight.setdefault(call.partition, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def dispatch_all(self, calls: list[Call]) -> None:
        for call in calls:
            self.dispatch(call)

    def take_waiting(self, numbers: set[int]) -> list[Call]:
        """The calls of these partitions still waiting for a slot (they will not get one)."""
        taken = [c for c in self._waiting_calls if c.partition in numbers]
        self._waiting_calls = [c for c in self._waiting_calls if c.partition not in numbers]
        return taken

    def retry_waiting_calls(self) -> None:
        if not self._waiting_calls:
            return
        waiting, self._waiting_calls = self._waiting_calls, []
        full: set[str] = set()  # lanes found without a free slot: their other calls wait on, in order
        for call in waiting:
            if call.connection.name in full and not call.has_slot:
                self._waiting_calls.append(call)
                continue
            self.dispatch(call)
            if self._waiting_calls and self._waiting_calls[-1] is call:
                full.add(call.connection.name)

    def _started(self, call: Call) -> None:
        if call.intent:
            call.intent = False
            self.lanes[call.connection.name].intents -= 1

    def abandon(self, call: Call) -> None:
        """A call that will never start: give back its intent and its slot."""
        self._started(call)
        if call.has_slot:
            self.lanes[call.connection.name].limiter.release()

    def abandon_all(self, calls: list[Call]) -> None:
        for call in calls:
            self.abandon(call)

    async def _run(self, call: Call, lane: Lane) -> None:
        started = self._clock.monotonic()
        try:
            event = await run_call(call, self.tracing)
        except asyncio.CancelledError:
            lane.limiter.release()
            raise
        wait_s = connection_wait_s(event, self._max_wait_s)
        self._adapt(call.connection.name, lane, started, event)
        if wait_s is not None:
            lane.limiter.block(self._clock.monotonic(), wait_s)
            self._metrics.connection_blocks.labels(call.connection.name, "local").inc()
            self._tell_fleet(call.connection.name, wait_s, event)
        lane.limiter.release()
        self._mailbox.put_nowait(CallAnswered(call.partition, call.incarnation, call.request_id, event, call.span_id))

    def _adapt(self, connection: str, lane: Lane, started: float, event: Event) -> None:
        """AIMD on the connection's concurrent calls: halved by a 429, grown back by answers."""
        now = self._clock.monotonic()
        limited = isinstance(event, CallFailed) and event.error.code == RateLimited.code
        lane.adaptive.answered(now, now - started, rate_limited=limited)
        calls = lane.adaptive.calls
        if calls != lane.limiter.max_concurrency:
            lane.limiter.max_concurrency = calls
            self._metrics.adaptive_concurrency.labels(connection).set(calls)

    def _tell_fleet(self, connection: str, wait_s: float, event: Event) -> None:
        until_ms = self._clock.now_ms() + math.ceil(wait_s * 1000)
        if self.announce is None or not self.blocks.worth_telling(connection, until_ms):
            return
        code = event.error.code if isinstance(event, CallFailed) else "blocked"
        self.announce(connection, until_ms, f"{code}: the vendor asked to wait {wait_s:g} s")

    async def wait_in_flight(self, numbers: set[int], deadline: float) -> None:
        """Let these partitions' calls end, until ``deadline`` (``time.monotonic()``)."""
        tasks = set().union(*(self._in_flight.get(n, set()) for n in numbers)) if numbers else set()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))

    # ---- partitions leaving ----------------------------------------------------------

    def forget(self, numbers: set[int]) -> None:
        """These partitions are gone: cancel their calls and drop their queued work."""
        for n in numbers:
            for task in self._in_flight.pop(n, set()):
                task.cancel()
        for call in self._waiting_calls:
            if call.partition in numbers:
                self._started(call)
        self._waiting_calls = [c for c in self._waiting_calls if c.partition not in numbers]
        self.exclusive.forget(numbers)
        for lane in self.lanes.values():
            lane.parked = [(p, r) for p, r in lane.parked if p not in numbers]
            lane.waiting = deque(w for w in lane.waiting if w[0] not in numbers)
            lane.waiting_submits = deque(w for w in lane.waiting_submits if w[0] not in numbers)
        self._timers.compact(set(self._partitions))

    def cancel_all(self) -> None:
        for tasks in self._in_flight.values():
            for task in tasks:
                task.cancel()


def _no_connection(state: JobState) -> Event:
    kind = CallKind.SUBMIT if state.phase in (Phase.PENDING, Phase.SUBMITTING) else CallKind.POLL
    return CallFailed(
        kind=kind,
        error=ErrorInfo("unknown_connection", f"connection {state.connection!r} is no longer configured", False),
    )
