"""Restore, then resume: the job states of partitions this worker is given (or must
rebuild) are read back from export.jobs in the background, with the group's committed
input offsets, while those partitions stay paused; the loop installs them when done."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from worker.engine.model import Phase
from worker.kafka import BrokerUnavailable
from worker.observability import Metrics
from worker.runtime.calls import Call
from worker.runtime.clients import GroupConsumer
from worker.runtime.dispatcher import CallDispatcher
from worker.runtime.fetch_start import resume_fetching
from worker.runtime.job_table import OpenJobs, parked_due
from worker.runtime.mailbox import CallAnswered, Mailbox, RestoreDone
from worker.runtime.partitions import OwnedPartition, Partitions
from worker.runtime.stepper import Stepper

log = structlog.get_logger("export_worker")


@dataclass(slots=True)
class Carried:
    """What a resync carries over to the state it reads back: the vendor answers whose
    records were lost with the failed transaction (applied again), and submits that
    never started although their intent was durable (withdrawn)."""

    answers: list[CallAnswered] = field(default_factory=list)
    unsent: list[Call] = field(default_factory=list)


# Reads these partitions of export.jobs back; returns each one's open jobs, decoded or
# parked (finished ones are needed only from the partition's store).
# ``state_reader.StoreReader`` in a worker.
StateReader = Callable[[list[int]], Awaitable[dict[int, OpenJobs]]]

# The first offset of each of these partitions of the input topic (the low watermark:
# where a consumer starts that has nothing committed, auto.offset.reset=earliest). The
# worker asks its admin client, one request for all of them.
LogStarts = Callable[[list[int]], Awaitable[dict[int, int]]]

# A failed restore is tried again after 1 s, 2 s, 4 s ... up to this.
MAX_RETRY_WAIT_S = 10.0
# How long one lookup of the group's committed offsets may take (at a takeover, and at a resync).
COMMITTED_LOOKUP_TIMEOUT_S = 10
RESYNC_LOOKUP_TIMEOUT_S = 30
# How long a resync keeps asking while the cluster cannot answer (a broker restarting,
# the group's coordinator moving) before the worker gives up. The loop polls nothing
# meanwhile: well within max.poll.interval.ms (300 s), drain included.
RESYNC_LOOKUP_DEADLINE_S = 90.0
# Errors of a committed-offset lookup that say "not now" rather than "no".
_LOOKUP_NOT_NOW = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
# How often the input offsets of partitions whose lookup failed are asked for again.
LEARN_EVERY_S = 2.0


class Restorer:
    def __init__(
        self,
        *,
        partitions: Partitions,
        read_states: StateReader,
        stepper: Stepper,
        dispatcher: CallDispatcher,
        mailbox: Mailbox,
        metrics: Metrics,
        log_starts: LogStarts,
        may_resume: Callable[[], bool] = lambda: True,
    ) -> None:
        """``may_resume``: whether restored partitions may be read at once (not while
        intake is paused for backpressure: the gate resumes them when it reopens)."""
        self.resync_lookup_deadline_s = RESYNC_LOOKUP_DEADLINE_S
        self._partitions = partitions
        self._log_starts = log_starts
        self._may_resume = may_resume
        self._read_states = read_states
        self._stepper = stepper
        self._dispatcher = dispatcher
        self._mailbox = mailbox
        self._metrics = metrics
        self._consumer: GroupConsumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._carried: dict[int, Carried] = {}  # by partition, until its next install
        self._learning: asyncio.Task[None] | None = None
        self._learned_at = 0.0
        # One committed-offset lookup at a time: each holds a consumer thread, and a
        # rebalance callback running meanwhile needs free ones for its own consumer calls.
        self._committed_lookup = asyncio.Lock()
        self._closed = False  # stopping: no restore starts or retries any more

    def open(self, consumer: GroupConsumer) -> None:
        self._consumer = consumer

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def begin(self, numbers: set[int], resume_at: dict[int, int] | None = None) -> None:
        """Own these partitions afresh and read their state back in the background."""
        if self._closed:
            return  # the worker is leaving: the next owner restores them
        incarnations = self._partitions.claim(numbers, resume_at)
        task = asyncio.create_task(self._restore(incarnations))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, numbers: set[int]) -> None:
        for n in numbers:
            self._carried.pop(n, None)

    def cancel(self) -> None:
        """At shutdown: stop restoring (the consumer is about to close) and start no more."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._learning is not None:
            self._learning.cancel()

    async def _restore(self, incarnations: dict[int, int]) -> None:
        """Read these partitions' job states (and the group's committed offsets) until it
        works: the partitions stay paused until then, so giving up would strand them."""
        attempt = 0
        while True:
            try:
                done = await self._read_back(incarnations)
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                log.exception("restore failed; retrying", partitions=sorted(incarnations), attempt=attempt)
                await asyncio.sleep(min(MAX_RETRY_WAIT_S, 0.5 * 2**attempt))
                if self._closed or all(self._partitions.current(n, i) is None for n, i in incarnations.items()):
                    return  # moved on meanwhile
                continue
            self._mailbox.put_nowait(done)
            return

    async def _read_back(self, incarnations: dict[int, int]) -> RestoreDone:
        started = time.monotonic()
        numbers = sorted(incarnations)
        states = await self._read_states(numbers)
        committed = await self.committed_best_effort(numbers)
        return RestoreDone(incarnations, states, time.monotonic() - started, committed)

    # ---- resync: forget what ran ahead of Kafka and read it back -----------------------

    async def pause(self, numbers: set[int]) -> None:
        assert self._consumer is not None
        await self._consumer.pause(self._tps(numbers))

    async def committed_offsets(self, numbers: set[int]) -> dict[int, int]:
        """The group's committed offsets (negative: none yet). Unknown is not "none": an
        error here raises, so a resync never rewinds to the beginning on it. While the
        cluster cannot answer (no answer, the coordinator unavailable or moving) it is
        asked again, for up to ``resync_lookup_deadline_s``; any other error raises at once."""
        assert self._consumer is not None
        deadline = time.monotonic() + self.resync_lookup_deadline_s
        delay = 0.1
        while True:
            timeout = max(1.0, min(RESYNC_LOOKUP_TIMEOUT_S, deadline - time.monotonic()))
            try:
                committed = await self._consumer.committed(self._tps(numbers), timeout=timeout)
                for tp in committed:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                return {tp.partition: tp.offset for tp in committed}
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() not in _LOOKUP_NOT_NOW or time.monotonic() + delay >= deadline:
                    raise
                log.warning(
                    "committed offsets unknown; asking again", partitions=sorted(numbers), error=error.str(), in_s=delay
                )
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_WAIT_S, delay * 2)

    async def rewind_and_restore(
        self, numbers: set[int], committed: dict[int, int], carried: dict[int, Carried] | None = None
    ) -> None:
        """Seek the consumer back to the committed offsets and restore these partitions;
        ``carried`` is applied to each once its state is back."""
        for number, more in (carried or {}).items():
            kept = self._carried.setdefault(number, Carried())
            kept.answers.extend(more.answers)
            kept.unsent.extend(more.unsent)
        assert self._consumer is not None
        resume_at = {}
        for number, offset in committed.items():
            # No committed offset yet: start over from the beginning (auto.offset.reset=earliest).
            at = offset if offset >= 0 else OFFSET_BEGINNING
            await self._consumer.seek(TopicPartition(self._partitions.topic, number, at))
            resume_at[number] = at
        self.begin(numbers, resume_at)

    def _tps(self, numbers: set[int] | list[int]) -> list[TopicPartition]:
        return [TopicPartition(self._partitions.topic, n) for n in numbers]

    async def committed_best_effort(self, numbers: list[int]) -> dict[int, int]:
        """Where each of these partitions' input stands for the group: its committed
        offset, or where the consumer starts when nothing was committed yet (the low
        watermark: auto.offset.reset=earliest). Best effort: partitions whose lookup did
        not answer (a dead owner's transaction still pending, a broker just restarted)
        are left out rather than kept paused; ``learn_missing_offsets`` asks again later.

        The worker sends these offsets with every transaction, also one without new input:
        that is what lets the group coordinator fence a worker that lost its partitions."""
        assert self._consumer is not None
        try:
            async with self._committed_lookup:
                found = await self._consumer.committed(self._tps(numbers), timeout=COMMITTED_LOOKUP_TIMEOUT_S)
                known = {tp.partition: tp.offset for tp in found if tp.offset >= 0 and tp.error is None}
                fresh = [tp.partition for tp in found if tp.error is None and tp.offset < 0]
                if fresh:  # nothing committed yet
                    lows = await self._log_starts(fresh)
                    known |= {number: low for number, low in lows.items() if low >= 0}
        except (KafkaException, BrokerUnavailable) as exc:
            log.warning("committed offsets unknown; resuming without them", partitions=numbers, error=str(exc))
            return {}
        return known

    def learn_missing_offsets(self, now: float) -> None:
        """Ask again, in the background, where ready partitions without a known input
        offset stand (at most every few seconds, one lookup at a time)."""
        missing = [n for n, p in self._partitions.items() if p.ready and p.next_offset is None]
        if not missing or self._learning is not None or now - self._learned_at < LEARN_EVERY_S:
            return
        self._learned_at = now
        incarnations = {n: self._partitions[n].incarnation for n in missing}
        self._learning = asyncio.create_task(self._learn(incarnations))

    async def _learn(self, incarnations: dict[int, int]) -> None:
        try:
            found = await self.committed_best_effort(sorted(incarnations))
            for number, offset in found.items():
                part = self._partitions.current(number, incarnations[number])
                if part is not None and part.next_offset is None:
                    part.next_offset = offset
        finally:
            self._learning = None

    def late_answer(self, part: OwnedPartition, answer: CallAnswered) -> None:
        """The answer of a call that outlived a resync of its partition: applied to the
        state read back (now, or once it is installed)."""
        if part.ready:
            self._stepper.answer(part, CallAnswered(part.number, part.incarnation, answer.request_id, answer.event))
        else:
            self._carried.setdefault(part.number, Carried()).answers.append(answer)

    def _apply_carried(self, part: OwnedPartition) -> None:
        carried = self._carried.pop(part.number, None)
        if carried is None:
            return
        for call in carried.unsent:
            state = part.jobs.get(call.request_id)
            if (
                state is not None
                and state.phase is Phase.SUBMITTING
                and state.submit_attempt == call.state.submit_attempt
                and state.vendor_job_id is None
            ):
                self._stepper.withdraw(part, call)
        for answer in carried.answers:
            self._stepper.answer(part, CallAnswered(part.number, part.incarnation, answer.request_id, answer.event))

    def _due_meanwhile(self, jobs: OpenJobs) -> OpenJobs:
        """Parked jobs due by now (the read was parked on a margin, and the committed
        offsets lookup can take seconds) are decoded, so the restore step spreads their
        overdue polls like any other's."""
        now = self._stepper.now_ms()
        if min(map(parked_due, jobs.parked.values()), default=now + 1) > now:
            return jobs  # the usual case, found by one pass in C instead of one in Python
        due = [rid for rid, (_v, due_ms, _vn, _s) in jobs.parked.items() if due_ms <= now]
        parked = dict(jobs.parked)
        states = list(jobs.states)
        for request_id in due:
            state = self._stepper.decoded(request_id, parked.pop(request_id)[0])
            if state is not None:
                states.append(state)
        return OpenJobs(states, parked)

    async def install(self, done: RestoreDone) -> None:
        """Put the restored jobs of partitions still current in place, resume their due
        work, and let the consumer read their requests."""
        assert self._consumer is not None
        installing = time.monotonic()
        ready = []
        total = parked = 0
        # Every partition's parked jobs go into the timer heap at once: added partition by
        # partition, a takeover of six partitions heapified the growing heap six times.
        timers: list[tuple[int, int, str]] = []
        for number, incarnation in done.incarnations.items():
            part = self._partitions.current(number, incarnation)
            if part is None:
                continue
            jobs = done.states.get(number) or OpenJobs([])
            jobs = self._due_meanwhile(jobs)
            for state in jobs.states:
                resumed = self._stepper.trimmed(number, self._stepper.resumed(state))
                part.jobs[state.request_id] = resumed
                if resumed.next_action_at_ms > 0:
                    self._dispatcher.schedule(resumed.next_action_at_ms, number, state.request_id)
            # Polling and not due yet: the restore step leaves such a job as it is, so it
            # is decoded (and trimmed) only when first needed.
            parked += part.jobs.park(jobs.parked, functools.partial(self._stepper.unparked, number))
            timers += [(due, number, rid) for rid, (_v, due, _vn, _s) in jobs.parked.items()]
            total += len(jobs.states) + len(jobs.parked)
            self._apply_carried(part)
            part.ready = True
            part.next_offset = done.committed.get(number)
            ready.append(TopicPartition(self._partitions.topic, number))
        self._dispatcher.schedule_many(timers)
        # Counted before the await below: from ``part.ready`` on, /readyz says ready, and
        # whoever reads /metrics then must find this restore in it.
        installed_s = time.monotonic() - installing
        self._metrics.restore_seconds.observe(done.seconds + installed_s)
        self._metrics.restored_jobs.inc(total)
        if ready and self._may_resume():
            await resume_fetching(self._consumer, ready)
        log.info(
            "partitions restored",
            partitions=sorted(tp.partition for tp in ready),
            jobs=total,
            parked=parked,
            seconds=round(done.seconds, 3),
            install_seconds=round(installed_s, 3),
        )
