"""Latency from a vendor job's success to its FileReady being committed (visible to a
read_committed consumer), p50 and p99, as a fraction of the poll interval."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.aio import AIOConsumer

from bench.common import bench_settings, itron_conn, simulator, start_worker, wait_ready
from bench.politeness import sim_get
from worker.codec import Codec
from worker.config import PolicyConfig
from worker.kafka import admin_client, ensure_topics
from worker.testing import Publisher, itron_request

INTERVAL_S = 1.0
POLICY = PolicyConfig(first_poll_s=INTERVAL_S, poll_initial_s=INTERVAL_S, poll_multiplier=1.0, poll_max_s=INTERVAL_S)


@dataclass
class Latency:
    requests: int
    interval_s: float
    p50_s: float
    p99_s: float


async def measure(bootstrap: str, n: int = 300) -> Latency:
    settings = bench_settings(bootstrap, "latency")
    await ensure_topics(settings, admin_client(settings))
    codec = Codec()
    async with simulator("itron", stage_seconds=0.5) as url:
        conn = itron_conn(url, POLICY, rate_per_s=2000.0, max_concurrency=64)
        worker = start_worker(settings, {"itron": conn}, "latency")
        seen: dict[str, float] = {}
        consumer = AIOConsumer(
            {**settings.librdkafka(), "group.id": "latency", "isolation.level": "read_committed",
             "fetch.wait.max.ms": 10, "enable.partition.eof": False},
            max_workers=2,
        )  # fmt: skip
        try:
            await wait_ready(worker)
            parts = settings.topics.partitions
            await consumer.assign([TopicPartition(settings.topics.files, p, OFFSET_BEGINNING) for p in range(parts)])
            async with Publisher(settings) as pub:
                for i in range(n):
                    await pub.send(itron_request(f"lat-{i}"))
                await pub.flush()
            deadline = time.monotonic() + 180
            while len(seen) < n and time.monotonic() < deadline:
                for msg in await consumer.consume(1000, 0.01):
                    if msg.error() is None or msg.error().code() != KafkaError._PARTITION_EOF:
                        seen.setdefault(codec.decode("FileReady", msg.value())["request_id"], time.time())
            jobs = await sim_get(url, "/_sim/jobs")
        finally:
            await consumer.close()
            worker.stop()
    from worker.vendors.base import JobSpec
    from worker.vendors.itron import correlation_id

    done_at = {j["match_key"]: j["done_wall"] for j in jobs}  # type: ignore[index]
    delays = sorted(seen[r] - done_at[correlation_id(JobSpec(r, "acme", "itron", {}))] for r in seen)
    return Latency(len(delays), INTERVAL_S, delays[len(delays) // 2], delays[int(len(delays) * 0.99)])


if __name__ == "__main__":
    from bench.common import broker

    with broker() as bootstrap:
        print(asyncio.run(measure(bootstrap)))
