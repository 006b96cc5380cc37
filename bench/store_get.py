"""Micro-bench: point ``get`` on re-opened stores (design state-store §1.3, §6.1).

A child process folds ``--keys`` records round-robin into ``--stores`` stores shaped like
restored ``export.jobs`` partitions (real JobState values, ``j/`` + ``o/``/``x/`` keys,
10,000-record WriteBatches, one 64 MiB cache with a 16 MiB write-buffer budget charged to
it) and closes them. This process then re-opens them with the variant's options and times
random ``get``s of keys never read before: first with the stores' files evicted from the
page cache (a restarted pod, or memory pressure), then with all their files in the page
cache (a store the kernel can keep cached).

    python -m bench.store_get [--keys 1000000] [--stores 6] [--variant NAME ...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBatch, WriteBufferManager

from worker.codec import Codec
from worker.engine.model import JobState, Phase, Status
from worker.records import state_to_record

MIB = 1 << 20
SAMPLE = 5_000


@dataclass(frozen=True)
class Variant:
    block_kib: int = 4
    in_cache: bool = True  # index and filter blocks charged to the block cache
    pin_l0: bool = False
    # rocksdict re-opens an existing DB with the column-family options it loads from the
    # OPTIONS file unless they are passed again: no filter policy, a private 8 MiB cache.
    cf_options: bool = True


VARIANTS = {
    "reopen-loaded-cf-options": Variant(cf_options=False),
    "4k-in-cache": Variant(),
    "4k-in-cache-pin-l0": Variant(pin_l0=True),
    "4k-table-reader": Variant(in_cache=False),
    "16k-in-cache-pin-l0": Variant(block_kib=16, pin_l0=True),
    "16k-table-reader": Variant(block_kib=16, in_cache=False),
}


def make_options(v: Variant, cache: Cache, wbm: WriteBufferManager) -> Options:
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_block_size(v.block_kib * 1024)
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(v.in_cache)
    table.set_pin_l0_filter_and_index_blocks_in_cache(v.pin_l0)
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.set_block_based_table_factory(table)
    o.set_write_buffer_manager(wbm)
    o.set_write_buffer_size(4 * MIB)
    o.set_max_write_buffer_number(2)
    o.set_max_total_wal_size(16 * MIB)
    o.set_compression_type(DBCompressionType.lz4())
    o.set_max_open_files(256)
    o.set_keep_log_file_num(2)
    return o


def shared() -> tuple[Cache, WriteBufferManager]:
    cache = Cache(64 * MIB)
    return cache, WriteBufferManager.new_write_buffer_manager_with_cache(16 * MIB, False, cache)


def open_store(path: Path, v: Variant, cache: Cache, wbm: WriteBufferManager) -> Rdict:
    o = make_options(v, cache, wbm)
    cfs = {"default": make_options(v, cache, wbm)} if v.cf_options else None
    return Rdict(str(path), o, column_families=cfs)


def state_value(codec: Codec, rng: random.Random) -> tuple[bytes, bool, int]:
    done = rng.random() > 0.05
    due = 1_733_000_000_000 + rng.randrange(7 * 86_400_000)
    state = JobState(
        str(uuid.UUID(int=rng.getrandbits(128))), "acme", "itron-main", "itron",
        '{"type":"MeterReads","format":"Csv","subscription_id":"8d6f2c1e-0b7a-4c3e-9f1d-2a5b6c7d8e9f"}',
        1_733_000_000_000, 3, rng.randrange(10**7), Phase.DONE if done else Phase.ACTIVE,
        Status.SUCCEEDED if done else Status.RUNNING, 4, 1_733_000_000_000, 1_733_000_100_000,
        vendor_job_id=str(uuid.UUID(int=rng.getrandbits(128))), next_action_at_ms=due,
    )  # fmt: skip
    return codec.encode("JobState", state_to_record(state)), not done, due


def request_ids(n: int) -> list[str]:
    rng = random.Random(2)
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]


def build(paths: list[Path], n: int, v: Variant, rates: multiprocessing.Queue[float]) -> None:
    ids = request_ids(n)
    codec, rng = Codec(), random.Random(1)
    pool = [state_value(codec, rng) for _ in range(2_000)]  # values need not match their keys here
    cache, wbm = shared()
    dbs = [open_store(path, v, cache, wbm) for path in paths]
    per_batch = 10_000 * len(dbs)
    started = time.perf_counter()
    for first in range(0, len(ids), per_batch):
        batches = [WriteBatch(raw_mode=True) for _ in dbs]
        for i in range(first, min(first + per_batch, len(ids))):
            value, open_, due = pool[i % len(pool)]
            key = ids[i].encode()
            batch = batches[i % len(dbs)]
            batch.put(b"j/" + key, value)
            batch.put(b"o/" + key if open_ else b"x/" + due.to_bytes(8, "big") + key, b"")
        for db, batch in zip(dbs, batches, strict=True):
            batch.put(b"m/offset", first.to_bytes(8, "big"))
            db.write(batch)
    rates.put(len(ids) / (time.perf_counter() - started))
    for db in dbs:
        db.close()


def evict_page_cache(paths: list[Path]) -> None:
    """Drop our own files from the OS page cache, without touching anybody else's."""
    for file in (f for path in paths for f in path.iterdir()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(paths: list[Path]) -> None:
    for file in (f for path in paths for f in path.iterdir()):
        try:
            with file.open("rb") as f:
                while f.read(1 << 20):
                    pass
        except FileNotFoundError:  # compacted away meanwhile
            pass


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(gets: list[tuple[Rdict, bytes]]) -> float:
    started = time.perf_counter()
    for db, key in gets:
        db.get(key)
    return (time.perf_counter() - started) / len(gets) * 1e6


def run(name: str, n: int, stores: int, root: Path) -> str:
    v = VARIANTS[name]
    paths = [root / f"{name}-{s}" for s in range(stores)]
    ids = request_ids(n)
    # spawn, not fork: RocksDB's background threads of an earlier variant would deadlock a fork
    context = multiprocessing.get_context("spawn")
    rates: multiprocessing.Queue[float] = context.Queue()
    child = context.Process(target=build, args=(paths, n, v, rates))
    child.start()
    rate = rates.get()
    child.join()
    evict_page_cache(paths)
    before = rss_mib()
    cache, wbm = shared()
    opened = time.perf_counter()
    dbs = [open_store(path, v, cache, wbm) for path in paths]
    open_ms = (time.perf_counter() - opened) * 1e3
    l0 = sum(db.property_int_value("rocksdb.num-files-at-level0") or 0 for db in dbs)
    picks = iter(random.Random(3).sample(range(n), 2 * SAMPLE))

    def hits() -> list[tuple[Rdict, bytes]]:  # request i went to store i % stores
        return [(dbs[i % stores], b"j/" + ids[i].encode()) for i in (next(picks) for _ in range(SAMPLE))]

    def misses() -> list[tuple[Rdict, bytes]]:
        return [(dbs[i % stores], b"j/" + str(uuid.uuid4()).encode()) for i in range(SAMPLE)]

    disk = timed(hits()), timed(misses())
    warm_page_cache(paths)
    paged = timed(hits()), timed(misses())
    grown = rss_mib() - before
    for db in dbs:
        db.close()
    return (
        f"{name:25} write {rate / 1000:5.1f}k rec/s  open {open_ms:4.0f} ms  L0 files {l0:2}  "
        f"get µs hit/miss: evicted {disk[0]:5.1f}/{disk[1]:5.1f}  page-cached {paged[0]:5.1f}/{paged[1]:5.1f}  "
        f"RSS +{grown:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000, help="over all stores")
    parser.add_argument("--stores", type=int, default=6)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="store-get-"))
    try:
        for name in args.variant or list(VARIANTS):
            print(run(name, args.keys, args.stores, root), flush=True)
            for path in root.glob(f"{name}-*"):
                shutil.rmtree(path)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
