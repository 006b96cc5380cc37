"""Reading what the workers wrote: export.status, export.files, the DLQ and export.jobs,
with read_committed (the demo's live table, and the tests' assertions)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Self

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer

from worker.codec import Codec
from worker.config import Settings, TopicSettings
from worker.kafka import admin_client, base_config, describe_partitions, ensure_topics


@dataclass
class Output:
    """Everything read so far from the worker's output topics."""

    status: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def statuses(self, request_id: str) -> list[str]:
        return [e["status"] for e in self.status if e["request_id"] == request_id]

    def events(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.status if e["request_id"] == request_id]

    def files_for(self, request_id: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f["request_id"] == request_id]

    def last_status(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for e in self.status:
            last[e["request_id"]] = e["status"]
        return last


class OutputReader:
    """Reads export.status, export.files, the DLQ and export.jobs with read_committed."""

    def __init__(self, settings: Settings, codec: Codec | None = None, *, include_jobs: bool = True) -> None:
        self.settings = settings
        self.codec = codec or Codec()
        self.include_jobs = include_jobs
        self.output = Output()
        self.raw_counts: dict[str, int] = defaultdict(int)
        self._consumer: AIOConsumer | None = None
        self._names: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        t: TopicSettings = self.settings.topics
        self._names = {t.status: "JobStatusChanged", t.files: "FileReady", t.dlq: "DeadLetter"}
        if self.include_jobs:
            self._names[t.jobs] = "JobState"
        conf = {
            **base_config(self.settings),
            "group.id": "export-worker-test-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
        self._consumer = AIOConsumer(conf, max_workers=2)
        await ensure_topics(self.settings, admin_client(self.settings))
        counts = await describe_partitions(admin_client(self.settings), list(self._names))
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic, n in counts.items() for p in range(n)]
        await self._consumer.assign(tps)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.close()

    async def read(self, timeout: float = 0.2) -> Output:
        assert self._consumer is not None
        t = self.settings.topics
        while True:
            batch = await self._consumer.consume(num_messages=5000, timeout=timeout)
            if not batch:
                return self.output
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(err.str())
                    continue
                topic = msg.topic()
                self.raw_counts[topic] += 1
                if topic == t.jobs:
                    key = msg.key().decode()
                    self.output.jobs[key] = None if msg.value() is None else self.codec.decode("JobState", msg.value())
                    continue
                record = self.codec.decode(self._names[topic], msg.value())
                record["_partition"] = msg.partition()
                record["_offset"] = msg.offset()
                if headers := msg.headers():
                    record["_headers"] = dict(headers)
                {t.status: self.output.status, t.files: self.output.files, t.dlq: self.output.dlq}[topic].append(record)
            timeout = 0.0
