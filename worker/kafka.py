"""Kafka plumbing: client configs, topic creation, and restoring export.jobs partitions.

Every blocking admin call runs in a thread; the consumers and the small producers are
confluent-kafka's asyncio ``AIOConsumer`` / ``AIOProducer``, the transactional producer
a ``Producer`` on a thread of its own (``worker.runtime.txn_producer``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec
from confluent_kafka.aio import AIOConsumer

from worker.config import Settings
from worker.errors import ConfigError, ExportWorkerError
from worker.store.checkpoint import LogFacts

T = TypeVar("T")

# librdkafka's own log lines go through Python logging (rendered by structlog).
CLIENT_LOGGER = logging.getLogger("export_worker.kafka")


class _RepeatFilter(logging.Filter):
    """librdkafka repeats a connection failure many times a second while a broker is
    down: keep one line per facility and client every ``window_s``, as a warning."""

    TRANSIENT = frozenset({"FAIL", "CONNECT", "REQTMOUT", "BROKERFAIL", "GETPID", "ERROR"})

    def __init__(self, window_s: float = 10.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[object, ...], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        facility = args[0] if args else None
        if facility not in self.TRANSIENT:
            return True
        key = args[:2]
        now = time.monotonic()
        if now - self._last.get(key, -self.window_s) < self.window_s:
            return False
        self._last[key] = now
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


CLIENT_LOGGER.addFilter(_RepeatFilter())


def base_config(settings: Settings) -> dict[str, Any]:
    return {**settings.librdkafka(), "logger": CLIENT_LOGGER}


class BrokerUnavailable(ExportWorkerError):
    """The Kafka cluster cannot be reached or refused an admin call."""

    retriable = True


def consumer_config(settings: Settings, *, group_id: str | None = None) -> dict[str, Any]:
    return {
        **base_config(settings),
        "group.id": group_id or settings.group_id,
        "client.id": f"{settings.group_id}-{settings.instance_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
        "max.poll.interval.ms": 300_000,
        "statistics.interval.ms": 0,
    }


def producer_config(settings: Settings, *, transactional_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **base_config(settings),
        "client.id": f"{settings.group_id}-{settings.instance_id}",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # The Java client's partitioner, so a key lands in the same partition whoever
        # produced it (librdkafka's default hashes differently).
        "partitioner": "murmur2_random",
    }
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = settings.transaction_timeout_ms
    return conf


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


# How long start-up waits for topics a peer worker is creating, or whose metadata has not
# reached every broker of a fresh cluster yet, before it gives up.
TOPICS_READY_S = 60.0
_UNREACHABLE = "cannot reach the Kafka cluster"

_TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_CONTROLLER,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)

# What to change when the cluster refuses to create or describe our topics for good.
_ADMIN_HINTS = {
    KafkaError.INVALID_REPLICATION_FACTOR: "set EXPORT_WORKER_TOPICS__REPLICATION_FACTOR to at most the broker count",
    KafkaError.INVALID_PARTITIONS: "check EXPORT_WORKER_TOPICS__PARTITIONS",
    KafkaError.POLICY_VIOLATION: "create the topics yourself and set EXPORT_WORKER_TOPICS__CREATE=false",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "the worker's principal needs ACLs on the topics (README, Security)",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "the worker's principal needs ACLs to create topics, or create them "
    "yourself and set EXPORT_WORKER_TOPICS__CREATE=false",
}


def transient_admin_error(error: KafkaError) -> bool:
    """Whether waiting can fix an admin call's error: a topic still being created, or not
    yet known to the broker asked, a moving leader or controller, a timeout. Refusals
    (authorisation, invalid settings, policy) are not."""
    return error.retriable() or error.code() in _TRANSIENT_CODES


@dataclass(frozen=True, slots=True)
class _Deadline:
    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> _Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def passed(self) -> bool:
        return time.monotonic() >= self.at


def _refused(what: str, error: KafkaError) -> ConfigError:
    hint = _ADMIN_HINTS.get(error.code())
    return ConfigError(f"{what}: {error.str()}" + (f" ({hint})" if hint else ""))


async def _retrying(what: str, call: Callable[[], Awaitable[T]], deadline: _Deadline) -> T:
    """``call()`` until it succeeds; transient admin errors are retried until ``deadline``."""
    delay = 0.05
    while True:
        try:
            return await call()
        except KafkaException as exc:
            error = exc.args[0]
            if not transient_admin_error(error):
                raise _refused(what, error) from None
            why = error.str()
        except TimeoutError:
            why = "no answer from the broker"
        if deadline.passed():
            raise BrokerUnavailable(f"{what}: {why}, still after {deadline.seconds:g} s") from None
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 2)


async def _list_topics(admin: AdminClient, timeout: float, topic: str | None = None) -> Any:
    """``admin.list_topics`` (all topics, or ``topic``) off the loop, bounded even if
    librdkafka overruns its own ``timeout``."""
    return await asyncio.wait_for(asyncio.to_thread(admin.list_topics, topic=topic, timeout=timeout), timeout + 5)


async def describe_partitions(admin: AdminClient, topics: Iterable[str], timeout: float = 15.0) -> dict[str, int]:
    """Partition counts of the topics that exist."""
    try:
        return (await _describe(admin, topics, timeout))[0]
    except KafkaException as exc:
        raise BrokerUnavailable(f"{_UNREACHABLE}: {exc.args[0].str() if exc.args else exc}") from None


async def _describe(
    admin: AdminClient, topics: Iterable[str], timeout: float = 15.0
) -> tuple[dict[str, int], set[str]]:
    """Partition counts of the topics that exist, and the names of those listed with a
    transient error (being created, or not on every broker yet)."""
    metadata = await _list_topics(admin, timeout)
    wanted = set(topics)
    ready: dict[str, int] = {}
    settling: set[str] = set()
    for name, topic in metadata.topics.items():
        if name not in wanted:
            continue
        if topic.error is None:
            ready[name] = len(topic.partitions)
        elif transient_admin_error(topic.error):
            settling.add(name)
    return ready, settling


async def ensure_topics(
    settings: Settings, admin: AdminClient | None = None, *, ready_s: float = TOPICS_READY_S
) -> dict[str, int]:
    """Create missing topics (export.jobs compacted) and check co-partitioning.

    Workers started together on a fresh cluster race to create the topics: a topic a peer
    created, or one some brokers do not know yet, is waited for (up to ``ready_s``),
    never a reason to exit. Refusals that waiting cannot fix fail at once (ConfigError).
    """
    admin = admin or admin_client(settings)
    deadline = _Deadline.after(ready_s)
    t = settings.topics
    names = [t.requests, t.status, t.files, t.jobs, t.dlq, t.control]
    # A worker started while the cluster is down or restarting waits for it too.
    existing, settling = await _retrying(_UNREACHABLE, lambda: _describe(admin, names), deadline)
    missing = [n for n in names if n not in existing]
    if missing and not t.create and not set(missing) <= settling:
        absent = [n for n in missing if n not in settling]
        raise ConfigError(f"topics missing and topic creation is off: {', '.join(absent)}")
    if missing:
        if t.create:
            await _create_topics(admin, settings, missing, existing.get(t.requests, t.partitions), deadline)
        existing = await _wait_for_topics(admin, names, deadline)
    if existing.get(t.jobs) != existing.get(t.requests):
        raise ConfigError(
            f"{t.jobs} has {existing.get(t.jobs)} partitions but {t.requests} has {existing.get(t.requests)}: "
            "the state topic must be co-partitioned with the request topic"
        )
    await _check_compacted(admin, t.jobs, deadline)
    return existing


def _new_topic(settings: Settings, name: str, partitions: int) -> NewTopic:
    t = settings.topics
    config: dict[str, str] = {}
    if name == t.jobs:
        config = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}
    if name == t.control:
        partitions = 1
        config = {"cleanup.policy": "compact"}
    return NewTopic(name, num_partitions=partitions, replication_factor=t.replication_factor, config=config)


async def _create_topics(
    admin: AdminClient, settings: Settings, names: list[str], partitions: int, deadline: _Deadline
) -> None:
    """Create ``names``; one a peer created first counts as created."""
    for name in names:

        async def create(name: str = name) -> None:
            (future,) = admin.create_topics([_new_topic(settings, name, partitions)], operation_timeout=30).values()
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), 40)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

        await _retrying(f"cannot create topic {name}", create, deadline)


async def _wait_for_topics(admin: AdminClient, names: list[str], deadline: _Deadline) -> dict[str, int]:
    """Wait until the broker asked lists every topic (a fresh topic reaches each broker's
    metadata a little after its creation)."""
    while True:
        existing = await describe_partitions(admin, names)
        missing = [n for n in names if n not in existing]
        if not missing:
            return existing
        if deadline.passed():
            raise BrokerUnavailable(
                f"topics {', '.join(missing)} are not in the cluster metadata after {deadline.seconds:g} s"
            )
        await asyncio.sleep(0.1)


async def _check_compacted(admin: AdminClient, topic: str, deadline: _Deadline) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)

    async def describe() -> Any:
        (future,) = admin.describe_configs([resource]).values()
        return await asyncio.wait_for(asyncio.wrap_future(future), 30)

    configs = await _retrying(f"describe {topic}", describe, deadline)
    policy = configs.get("cleanup.policy")
    # compact,delete would let time retention delete the only record of a job whose
    # status has not changed for a while: the state topic must be compact only.
    if policy is not None and str(policy.value).replace(" ", "") != "compact":
        raise ConfigError(f"{topic} must have cleanup.policy=compact (it has {policy.value})")


@dataclass(frozen=True, slots=True)
class RestoredPartition:
    partition: int
    values: dict[bytes, bytes]  # key -> latest value (tombstoned keys removed)
    records: int
    seconds: float


# librdkafka (2.16) can free a ListOffsets request while the thread that issued it still
# uses it. ``AdminClient.list_offsets`` first looks the partitions' leaders up on the
# calling thread; when one is not in the metadata cache, that lookup registers itself for
# the next cache change and goes on. A metadata answer arriving in that window (another
# request's on the same client: a DescribeTopics, a second lookup) runs the lookup again
# on librdkafka's own thread, which completes and frees it under the first: a
# segmentation fault in ``AdminClient.list_offsets``. So the topic's metadata is asked for
# first (``_cache_leaders``): with every leader cached, the lookup completes on the calling
# thread and never waits. And one call at a time per client, each until its answers are in.
_OFFSETS_LOCKS: weakref.WeakKeyDictionary[AdminClient, asyncio.Lock] = weakref.WeakKeyDictionary()


def offsets_lock(admin: AdminClient) -> asyncio.Lock:
    """The lock ``list_offsets`` holds on ``admin`` from its request to its answers."""
    lock = _OFFSETS_LOCKS.get(admin)
    if lock is None:
        lock = _OFFSETS_LOCKS[admin] = asyncio.Lock()
    return lock


async def list_offsets(
    admin: AdminClient,
    topic: str,
    partitions: list[int],
    isolation: IsolationLevel,
    *,
    timeout: float = 30.0,
    spec: OffsetSpec | None = None,
) -> dict[int, int]:
    """Latest offsets (high watermark, or last stable offset with READ_COMMITTED), or
    those of another ``spec`` (e.g. the log start), retrying the transient errors of
    freshly created or moving partitions."""
    if not partitions:
        return {}
    deadline = time.monotonic() + timeout
    while True:
        request = {TopicPartition(topic, p): spec or OffsetSpec.latest() for p in partitions}
        try:
            async with offsets_lock(admin):
                await _cache_leaders(admin, topic, partitions, max(deadline - time.monotonic(), 1.0))
                result = {}
                for tp, fut in admin.list_offsets(request, isolation_level=isolation).items():
                    result[tp.partition] = (await asyncio.wait_for(asyncio.wrap_future(fut), timeout)).offset
            return result
        except KafkaException as exc:
            error = exc.args[0]
            if not transient_admin_error(error) or time.monotonic() > deadline:
                raise BrokerUnavailable(f"list offsets of {topic}: {error.str()}") from None
        except TimeoutError:
            raise BrokerUnavailable(f"list offsets of {topic}: no answer within {timeout:.0f} s") from None
        await asyncio.sleep(0.05)


async def _cache_leaders(admin: AdminClient, topic: str, partitions: list[int], timeout: float) -> None:
    """Ask for ``topic``'s metadata (librdkafka caches it) and check that each partition
    has a leader; raise a transient ``KafkaException`` if one has none yet."""
    described = (await _list_topics(admin, timeout, topic)).topics.get(topic)
    if described is None or described.error is not None:
        raise KafkaException(described.error if described is not None else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    if any(p not in described.partitions or described.partitions[p].leader < 0 for p in partitions):
        raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))


async def log_starts(admin: AdminClient, topic: str, partitions: list[int], *, timeout: float = 30.0) -> dict[int, int]:
    """Each partition's first offset (its low watermark), in one request."""
    return await list_offsets(
        admin, topic, partitions, IsolationLevel.READ_UNCOMMITTED, timeout=timeout, spec=OffsetSpec.earliest()
    )


async def wait_stable(admin: AdminClient, topic: str, partitions: list[int], *, timeout: float) -> bool:
    """Wait until no transaction is open on these partitions (last stable offset has
    reached the high watermark seen at the start), so a restore cannot miss the previous
    owner's last commit. Returns False when it gave up after ``timeout``."""
    deadline = time.monotonic() + timeout
    target = await list_offsets(admin, topic, partitions, IsolationLevel.READ_UNCOMMITTED)
    while True:
        stable = await list_offsets(admin, topic, partitions, IsolationLevel.READ_COMMITTED)
        if all(stable[p] >= target[p] for p in partitions):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


async def _describe_log(admin: AdminClient, topic: str, timeout: float) -> tuple[Any, Any, Any]:
    """The cluster, the topic's description and its configs, asked for at once."""

    def wait(future: Any) -> Awaitable[Any]:
        return asyncio.wait_for(asyncio.wrap_future(future), timeout)

    try:
        (described,) = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout).values()
        (configured,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        cluster, description, configs = await asyncio.gather(
            wait(admin.describe_cluster(request_timeout=timeout)), wait(described), wait(configured)
        )
    except KafkaException as exc:
        raise BrokerUnavailable(f"describe {topic}: {exc.args[0].str() if exc.args else exc}") from None
    except TimeoutError:
        raise BrokerUnavailable(f"describe {topic}: no answer within {timeout:.0f} s") from None
    return cluster, description, configs


async def log_facts(
    admin: AdminClient, topic: str, partitions: list[int], *, timeout: float = 30.0
) -> dict[int, LogFacts]:
    """What the broker says about these partitions' logs, for deciding whether a local
    store of them can be trusted (``worker.store.LogFacts``): the cluster and topic
    incarnation (topic id), each log's start and high watermark, and
    ``delete.retention.ms`` (how long a tombstone is kept after compaction)."""

    # Asked for together (the two offset lookups take turns: ``offsets_lock``).
    (cluster, description, configs), starts, ends = await asyncio.gather(
        _describe_log(admin, topic, timeout),
        log_starts(admin, topic, partitions, timeout=timeout),
        list_offsets(admin, topic, partitions, IsolationLevel.READ_UNCOMMITTED, timeout=timeout),
    )
    retention = configs.get("delete.retention.ms")
    delete_retention_ms = int(retention.value) if retention is not None and retention.value else 86_400_000
    return {
        p: LogFacts(
            cluster_id=str(cluster.cluster_id),
            topic=topic,
            topic_id=str(description.topic_id),
            partition=p,
            log_start=starts[p],
            high_watermark=ends[p],
            delete_retention_ms=delete_retention_ms,
        )
        for p in partitions
    }


async def restore(
    settings: Settings,
    topic: str,
    starts: Mapping[int, int],
    on_chunk: Callable[[Chunk], Awaitable[None]],
    *,
    admin: AdminClient | None = None,
    stall_s: float = 30.0,
    header: str | None = None,
) -> dict[int, int]:
    """Read partitions of a compacted topic from ``starts`` (OFFSET_BEGINNING: from the
    start) to their end, read_committed, handing each batch to ``on_chunk``: a new
    owner's takeover, so it first waits (bounded by the transaction timeout) for the
    previous owner's open transaction to end. Returns where each partition ended.
    ``header``: as ``stream_compacted``."""
    if not starts:
        return {}
    admin = admin or admin_client(settings)
    partitions = sorted(starts)
    # An open transaction of a dead owner holds the stable offset back until the
    # transaction times out (transaction_timeout_ms) or its owner restarts.
    if not await wait_stable(admin, topic, partitions, timeout=settings.transaction_timeout_ms / 1000 + 5):
        CLIENT_LOGGER.warning("restoring %s %s past an open transaction that did not end in time", topic, partitions)
    conf = {**base_config(settings), "group.id": f"{settings.group_id}.restore"}
    return await stream_compacted(conf, topic, starts, on_chunk, stall_s=stall_s, verb="restoring", header=header)


async def read_compacted(
    client: dict[str, Any],
    topic: str,
    partitions: list[int],
    *,
    starts: Mapping[int, int] | None = None,
    ends: Mapping[int, int] | None = None,
    on_progress: Callable[[int], None] | None = None,
    stall_s: float = 30.0,
    verb: str = "reading",
) -> list[RestoredPartition]:
    """Read ``partitions`` of a compacted topic from the beginning with read_committed,
    keeping the latest value per key (a tombstone deletes its key): the operator
    commands' reader of export.jobs.

    Args:
        starts: each partition's first offset, if known (looked up: a fresh consumer
            given OFFSET_BEGINNING waits 500 ms before it asks).
        Others as ``stream_compacted``."""
    started = time.monotonic()
    values: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    counts = dict.fromkeys(partitions, 0)

    async def fold(chunk: Chunk) -> None:
        part = values[chunk.partition]
        counts[chunk.partition] += chunk.records
        for key, value in chunk.latest.items():
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value
        if on_progress is not None and chunk.records:
            on_progress(chunk.records)

    beginnings = {p: OFFSET_BEGINNING if starts is None else starts[p] for p in partitions}
    await stream_compacted(client, topic, beginnings, fold, ends=ends, stall_s=stall_s, verb=verb)
    seconds = time.monotonic() - started
    return [RestoredPartition(p, values[p], counts[p], seconds) for p in partitions]


@dataclass(frozen=True, slots=True)
class Chunk:
    """The keyed records of one partition from one consumed batch, as the last value of
    each key (``None``: a tombstone; an earlier record of a key in the same batch is
    superseded, as compaction would), how many records that was, and where reading goes
    on from: one past the last record, or the partition's end once it is reached."""

    partition: int
    latest: dict[bytes, bytes | None]
    records: int
    next_offset: int
    # Asked for a header (``stream_compacted``): its value for each key of ``latest``
    # whose last record has it.
    heads: dict[bytes, bytes] | None = None


async def stream_compacted(
    client: dict[str, Any],
    topic: str,
    starts: Mapping[int, int],
    on_chunk: Callable[[Chunk], Awaitable[None]],
    *,
    ends: Mapping[int, int] | None = None,
    stall_s: float = 30.0,
    verb: str = "reading",
    header: str | None = None,
) -> dict[int, int]:
    """Read partitions of a compacted topic with read_committed, each from its offset in
    ``starts`` (or OFFSET_BEGINNING) to its end, handing each consumed batch over
    partition by partition, in order (``on_chunk``; one batch is handed over while the
    next is consumed, and nothing else is held). The one reader of export.jobs, for a worker's
    restore and for the operator commands. Returns where each partition ended (the
    offset to read from next time).

    Args:
        client: the client's base config (bootstrap, security, logger, group.id).
        ends: per partition, the offset to stop before (e.g. the last stable offset when
            the read began): records appended meanwhile are neither read nor waited for.
            Without it a partition is read until the consumer reaches its end.
        stall_s: BrokerUnavailable when nothing at all arrives for this long.
        verb: how errors name the read ("restoring export.jobs[3]: ...").
        header: the name of a record header to hand over with the values (``Chunk.heads``).
    """
    positions = {p: (at if at >= 0 else 0) for p, at in starts.items()}
    pending = set(starts)
    if ends is not None:
        for p in list(pending):
            if ends[p] <= max(positions[p], 0):  # nothing (more) was ever written
                pending.discard(p)
                await on_chunk(Chunk(p, {}, 0, max(positions[p], ends[p])))
    if not pending:
        return positions
    conf = {
        **client,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        # A start the log no longer has (retention or DeleteRecords moved its start
        # since it was looked up) is an error, retried from a fresh look: librdkafka's
        # default would jump to the end and skip the whole partition silently.
        "auto.offset.reset": "error",
        "fetch.wait.max.ms": 50,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.max.messages.kbytes": 262_144,
    }
    consumer = AIOConsumer(conf, max_workers=2)
    # A cancelled read (a shutdown) must not close the consumer while a consume() is
    # still running in its executor thread: librdkafka would free what that call uses
    # (seen as glibc aborting the process: "unaligned tcache chunk detected").
    consuming: asyncio.Future[Any] | None = None
    # One batch is handed over while the next is consumed: the two overlap (librdkafka
    # and the receiver each release the GIL for part of their work). Batches are handed
    # over strictly in order.
    delivering: asyncio.Future[None] | None = None

    async def deliver(ready: list[Chunk]) -> None:
        for chunk in ready:
            await on_chunk(chunk)

    try:
        await consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
        last_progress = time.monotonic()
        while pending:
            # consume() returns early only when the batch is full: keep the wait short so
            # the end-of-partition markers are seen as soon as they arrive.
            consuming = asyncio.ensure_future(consumer.consume(num_messages=10_000, timeout=0.05))
            batch = await asyncio.shield(consuming)
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                raise BrokerUnavailable(f"{verb} {topic}{sorted(pending)}: nothing read for {stall_s:.0f} s")
            chunks: dict[int, dict[bytes, bytes | None]] = {}
            heads: dict[int, dict[bytes, bytes]] = {}
            counts = dict.fromkeys(pending, 0)
            reached: set[int] = set()
            for msg in batch:
                number = msg.partition()
                if number not in pending:
                    continue  # already at its end (a prefetched record past it)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        positions[number] = max(positions[number], msg.offset())
                        reached.add(number)
                        continue
                    raise BrokerUnavailable(f"{verb} {topic}[{number}]: {err.str()}")
                offset = msg.offset()
                if ends is not None and offset >= ends[number]:
                    positions[number] = max(positions[number], ends[number])
                    reached.add(number)
                    continue
                positions[number] = offset + 1
                if ends is not None and offset >= ends[number] - 1:
                    reached.add(number)
                key = msg.key()
                if key is not None:
                    latest = chunks.get(number)
                    if latest is None:
                        latest = chunks[number] = {}
                        heads[number] = {}
                    latest[key] = msg.value()
                    counts[number] += 1
                    if header is not None:
                        # The header of the key's last record (its last one if repeated);
                        # a last record without it leaves none from an earlier one.
                        found = None
                        for name, head in msg.headers() or ():
                            if name == header:
                                found = head
                        if found is not None:
                            heads[number][key] = found
                        else:
                            heads[number].pop(key, None)
            ready = [
                Chunk(
                    number,
                    chunks.get(number, {}),
                    counts[number],
                    positions[number],
                    heads.get(number, {}) if header is not None else None,
                )
                for number in sorted(chunks.keys() | reached)
            ]
            if delivering is not None:
                await delivering
            delivering = asyncio.ensure_future(deliver(ready))
            if reached:
                # At their end: fetch nothing more of them (records written since are not read).
                pending -= reached
                await consumer.pause([TopicPartition(topic, n) for n in sorted(reached)])
        if delivering is not None:
            await delivering
    finally:
        if delivering is not None and not delivering.done():
            delivering.cancel()
            await asyncio.wait([delivering], timeout=10)
        if consuming is not None and not consuming.done():
            await asyncio.wait([consuming], timeout=10)
        await consumer.close()
    return positions
