"""The raw baseline for end-to-end throughput: the same Kafka reads and writes and the
same vendor HTTP calls (token, submit, one poll) with confluent-kafka and aiohttp, and
no export-worker logic (no engine, no state, no transactions, no Avro).

    python -m bench.raw_pipeline BOOTSTRAP TOPIC OUT_TOPIC N SIM_URL CONCURRENCY RECORDS_PER_REQUEST
prints the seconds from the first request read to the last output delivered.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid

import aiohttp
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.aio import AIOConsumer, AIOProducer

from bench.itron_client import itron_headers

SUBSCRIPTION = "7f7f2d8e-6c38-4b8e-9a53-6a1f1c7b2e10"


async def main(bootstrap: str, topic: str, out_topic: str, n: int, sim: str, concurrency: int, per: int) -> None:
    consumer = AIOConsumer(
        {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False},
        max_workers=2,
    )
    producer = AIOProducer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"}, batch_size=1000)
    meta = await consumer.list_topics(topic, timeout=10)
    parts = len(meta.topics[topic].partitions)
    await consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
    # The worker's session has no cap on connections of its own (``vendor_session``): nor
    # has this one, so both make the same CONCURRENCY calls at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        headers = await itron_headers(session, sim)
        gate = asyncio.Semaphore(concurrency)
        futures: list[asyncio.Future[object]] = []

        async def one(value: bytes, key: bytes) -> None:
            async with gate:
                h = {**headers, "Itron-CorrelationId": str(uuid.uuid4())}
                base = f"{sim}/dpss/api/v1/subscriptions/{SUBSCRIPTION}/batch-request"
                body = {"filetype": "Csv", "tokens": {"ServicePoint": "1"}, "isOhsRequest": False}
                async with session.post(base, json=body, headers=h) as r:
                    job = (await r.json())["jobId"]
                async with session.get(f"{base}/{job}", headers=h) as r:
                    await r.json()
            for _ in range(per):  # the same number of records the worker writes per request
                futures.append(await producer.produce(out_topic, value=value, key=key))

        started = None
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage0.ru_utime + usage0.ru_stime
        seen = 0
        tasks = []
        while seen < n:
            for msg in await consumer.consume(500, 0.05):
                if msg.error():
                    continue
                started = started or time.monotonic()
                seen += 1
                tasks.append(asyncio.create_task(one(msg.value(), msg.key())))
        await asyncio.gather(*tasks)
        await producer.flush()
        await asyncio.gather(*futures)
        await consumer.commit(asynchronous=False)
        assert started is not None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"{time.monotonic() - started:.3f} {usage.ru_utime + usage.ru_stime - cpu0:.3f}")
    await consumer.close()
    await producer.close()


if __name__ == "__main__":
    b, t, o, n, s, c, per = sys.argv[1:8]
    asyncio.run(main(b, t, o, int(n), s, int(c), int(per)))
