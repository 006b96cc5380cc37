"""Job state at retention (issue 13, design state-store §5): export.jobs holds 1,000,000
finished jobs and 50,000 open ones over 6 partitions.

- cold takeover: a worker with an empty state dir takes every partition; seconds from
  assignment until it polls again (the worker's restore_seconds: read, load, install;
  process start to /readyz is printed beside it, as start-up costs the same either way),
  and the worker's restore rate against a bare consumer reading the same
  partitions to their end (``bench.restore.bare_read``);
- RSS at retention: the worker's largest VmRSS over a window after it is ready, against
  the same worker holding the open jobs alone (what retention adds is the difference);
- warm takeover: the worker stops cleanly, another writer appends 1,000 state records
  (as the partitions' owner in between would), and the worker restarts with the same
  instance id and state dir; seconds to /readyz, and the records it read (mode="warm").

    python -m bench.store [--quick] [--finished N] [--open M]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    WORKDIR,
    BenchFailed,
    Process,
    StateRecord,
    bench_settings,
    itron_conn,
    metric,
    produce,
    rss_kib,
    scrape,
    simulator,
    start_worker,
    wait_ready,
)
from bench.restore import bare_read
from worker.codec import Codec
from worker.config import PolicyConfig
from worker.engine.model import FileInfo, JobState, Phase, Status
from worker.kafka import admin_client, ensure_topics
from worker.ops.partitioner import partition_for
from worker.records import state_to_record
from worker.store.peek import open_peek_header

FINISHED, OPEN = 1_000_000, 50_000
QUICK_FINISHED, QUICK_OPEN = 100_000, 5_000
TAIL = 1_000  # records another owner writes while the worker is away
SAMPLE_S, QUICK_SAMPLE_S = 10.0, 5.0

DAY_MS = 86_400_000
# Open jobs' next poll is an hour away: the bench measures restore and memory, not polling,
# so the simulator stays idle for the whole run (at 1,000,000 states it lasts minutes).
FIRST_POLL_MS = 3_600_000
POLICY = PolicyConfig(first_poll_s=30, poll_initial_s=30, poll_multiplier=1.0, poll_max_s=30)
JOB = (
    '{"type":"ItronBatchRequest","filetype":"Csv","tokens":{"StartEventDate":"2025-01-01",'
    '"EndEventDate":"2025-01-31","ServicePoint":"9000053409,9002036306"},"is_ohs_request":false}'
)
# Fields that differ from job to job; the rest of a value is the template's bytes.
SLOTS = (
    "request_id",
    "origin_partition",
    "origin_offset",
    "vendor_job_id",
    "next_action_at_ms",
    "file.url",
    "file.expires_at_ms",
)


@dataclass
class StoreBench:
    finished: int
    open: int
    value_bytes: int  # the log written, values only
    write_s: float
    bare_s: float  # a bare consumer reading every partition to its end
    cold_ready_s: float  # process start -> /readyz, empty state dir
    cold_restore_s: float  # the worker's export_worker_restore_seconds
    cold_restored_jobs: float  # export_worker_restored_jobs_total
    rss_ready_mib: float  # VmRSS at /readyz
    rss_max_mib: float  # largest VmRSS over the window after /readyz
    baseline_rss_mib: float  # the same worker holding the open jobs alone
    stop_s: float  # SIGTERM -> exit
    stop_code: int | None  # 0: a clean stop
    warm_ready_s: float  # process start -> /readyz, same instance id and state dir, TAIL new records
    warm_restore_s: float
    warm_records: float | None  # export_worker_restored_records_total{mode="warm"}, if the worker has it

    @property
    def records(self) -> int:
        return self.finished + self.open

    @property
    def cold_states_per_s(self) -> float:
        return self.records / (self.cold_restore_s or self.cold_ready_s)

    @property
    def bare_states_per_s(self) -> float:
        return self.records / self.bare_s

    @property
    def cold_ratio(self) -> float:
        return self.cold_states_per_s / self.bare_states_per_s

    @property
    def retained_bytes_per_job(self) -> float:
        return (self.rss_max_mib - self.baseline_rss_mib) * 2**20 / self.finished


def label(n: int) -> str:
    """``1m`` for 1,000,000, ``100k`` for 100,000: the size in a figure's name."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


# ---- values: one encoding per kind of state, the varying fields spliced in ----------------


def _long(n: int) -> bytes:
    """An Avro int or long: zigzag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return _long(len(data)) + data


def _path(record: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, leaf = dotted.split(".")
    for name in parents:
        record = record[name]
        if isinstance(record, tuple):  # a union's record as its (name, fields) pair
            record = record[1]
    return record, leaf


class Template:
    """A JobState record encoded once, with the bytes of the fields named in ``slots``
    replaced per value: an Avro string or long is self-delimiting, so a slot's new value
    may be longer or shorter. About 4x faster than encoding every record with fastavro,
    which would dominate writing a million of them."""

    def __init__(self, codec: Codec, record: dict[str, Any], slots: Sequence[str]) -> None:
        marked = copy.deepcopy(record)
        found: list[tuple[int, int, int, Callable[[Any], bytes]]] = []  # (at, length, slot, encoder)
        markers: list[tuple[bytes, Callable[[Any], bytes]]] = []
        for k, dotted in enumerate(slots):
            parent, leaf = _path(marked, dotted)
            if isinstance(parent[leaf], str):
                marker: Any = f"\x01slot-{k:02d}\x01"
                markers.append((_string(marker), _string))
            else:
                marker = 0x2A5A5A5A - k  # within an Avro int, an unlikely byte pattern as a varint
                markers.append((_long(marker), _long))
            parent[leaf] = marker
        encoded = codec.encode("JobState", marked)
        for k, (raw, encoder) in enumerate(markers):
            at = encoded.find(raw)
            if at < 0 or encoded.find(raw, at + 1) >= 0:
                raise BenchFailed(f"slot {slots[k]} not found exactly once in the encoded template")
            found.append((at, len(raw), k, encoder))
        found.sort()
        self._head = encoded[: found[0][0]]
        self._plan: list[tuple[int, Callable[[Any], bytes], bytes]] = []
        for i, (at, length, k, encoder) in enumerate(found):
            end = found[i + 1][0] if i + 1 < len(found) else len(encoded)
            self._plan.append((k, encoder, encoded[at + length : end]))
        # The splice must give exactly what fastavro gives for the record itself.
        originals = [parent[leaf] for parent, leaf in (_path(record, s) for s in slots)]
        if self.value(*originals) != codec.encode("JobState", record):
            raise BenchFailed("a spliced value differs from the encoded record")

    def value(self, *values: Any) -> bytes:
        """The encoded record with ``values`` in its slots, in the order the slots were named."""
        parts = [self._head]
        for k, encoder, tail in self._plan:
            parts.append(encoder(values[k]))
            parts.append(tail)
        return b"".join(parts)


def _finished_state(now: int) -> JobState:
    return JobState(
        request_id="store-done-0000000", tenant="acme", connection="itron", vendor="itron", job_json=JOB,
        requested_at_ms=now - DAY_MS, origin_partition=0, origin_offset=0, phase=Phase.DONE,
        status=Status.SUCCEEDED, sequence=6, created_at_ms=now - DAY_MS, updated_at_ms=now - 3_600_000,
        vendor_status="Completed", vendor_job_id="00000000-0000-4000-8000-000000000000", submit_attempt=1,
        next_action_at_ms=now + DAY_MS, poll_attempt=12,
        file=FileInfo(
            url="https://dpss.example.test/files/00000000-0000-4000-8000-000000000000/export.csv",
            format="csv", expires_at_ms=now + DAY_MS, size_bytes=1_482_113, sha256="9f2c" * 16,
        ),
        finished_at_ms=now - 3_600_000,
    )  # fmt: skip


def _open_state(now: int) -> JobState:
    return JobState(
        request_id="store-open-0000000", tenant="acme", connection="itron", vendor="itron", job_json=JOB,
        requested_at_ms=now - 600_000, origin_partition=0, origin_offset=0, phase=Phase.ACTIVE,
        status=Status.RUNNING, sequence=4, created_at_ms=now - 600_000, updated_at_ms=now - 60_000,
        vendor_status="Running", vendor_job_id="00000000-0000-4000-8000-000000000000", submit_attempt=1,
        next_action_at_ms=now + FIRST_POLL_MS, poll_attempt=3,
    )  # fmt: skip


class States:
    """The bench's export.jobs records (``StateRecord``)."""

    def __init__(self, codec: Codec, partitions: int, now: int) -> None:
        self._partitions = partitions
        self._now = now
        self._finished = Template(codec, state_to_record(_finished_state(now)), SLOTS)
        self._open = Template(codec, state_to_record(_open_state(now)), SLOTS[:5])

    @staticmethod
    def open_id(i: int) -> str:
        return f"store-open-{i:07d}"

    def finished(self, i: int, request_id: str | None = None) -> StateRecord:
        """Finished job ``i``: its link expires, and its timer is due, 1 hour to 7 days from now."""
        rid = request_id or f"store-done-{i:07d}"
        key = rid.encode()
        p = partition_for(key, self._partitions)
        job_id = f"{i:08d}-0000-4000-8000-000000000000"
        due = self._now + 3_600_000 + (i * 7_919_993) % (7 * DAY_MS - 3_600_000)
        url = f"https://dpss.example.test/files/{job_id}/export.csv"
        head = open_peek_header(Phase.DONE, due, "itron", Status.SUCCEEDED.value)
        return key, p, self._finished.value(rid, p, i, job_id, due, url, due), head

    def opened(self, i: int) -> StateRecord:
        """Open job ``i``, polled next in an hour (spread over 30 s)."""
        rid = self.open_id(i)
        key = rid.encode()
        p = partition_for(key, self._partitions)
        job_id = f"{i:08d}-0000-4000-8000-00000000000a"
        due = self._now + FIRST_POLL_MS + i % 30_000
        head = open_peek_header(Phase.ACTIVE, due, "itron", Status.RUNNING.value)
        return key, p, self._open.value(rid, p, i, job_id, due), head

    def initial(self, finished: int, opened: int) -> Iterator[StateRecord]:
        """``finished`` finished and ``opened`` open jobs, the open ones spread through the log."""
        every = max(1, finished // max(1, opened))
        o = 0
        for i in range(finished):
            yield self.finished(i)
            if i % every == 0 and o < opened:
                yield self.opened(o)
                o += 1
        for j in range(o, opened):
            yield self.opened(j)

    def tail(self, n: int, offset: int) -> Iterator[StateRecord]:
        """What the owner in between wrote: open jobs 0..n-1 finished."""
        for i in range(n):
            yield self.finished(offset + i, self.open_id(i))


# ---- the worker ---------------------------------------------------------------------------


async def ready(worker: Process, name: str, timeout: float) -> float:
    """Seconds to /readyz; a worker that exits or never gets ready fails the bench, with
    the end of its log."""
    try:
        return await wait_ready(worker, timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        worker.stop()
        log = WORKDIR / f"worker-{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        raise BenchFailed(
            f"worker {name} did not become ready ({exc}; limit {timeout:.0f} s); {log}:\n" + "\n".join(tail)
        ) from exc


async def max_rss_mib(pid: int, seconds: float) -> float:
    """The largest VmRSS of ``pid`` sampled every 0.25 s for ``seconds``."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.25)  # the sampling period, not a synchronisation
    return peak / 1024


def optional_metric(text: str, name: str, labels: dict[str, str]) -> float | None:
    """A metric's value, or None when the worker does not expose it (today's runtime)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    present = any(line.startswith(name) and all(w in line for w in wanted) for line in text.splitlines())
    return metric(text, name, labels) if present else None


def stop(worker: Process) -> tuple[float, int | None]:
    """SIGTERM and wait (a kill after 30 s); seconds taken and the exit code."""
    started = time.monotonic()
    worker.stop()
    return time.monotonic() - started, worker.proc.returncode


@contextlib.asynccontextmanager
async def topics(bootstrap: str, name: str, state_dir: Path) -> Any:
    """Fresh topics and group for one part of the bench; deleted afterwards, with the state
    dir, so a 1,000,000-state run leaves nothing on disk."""
    settings = bench_settings(bootstrap, name, state_dir=state_dir)
    admin = admin_client(settings)
    try:
        await ensure_topics(settings, admin)
        yield settings
    finally:
        t = settings.topics
        names = [t.requests, t.status, t.files, t.jobs, t.dlq, t.control]
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(future)
        shutil.rmtree(state_dir, ignore_errors=True)


def ready_timeout(records: int) -> float:
    # Today's runtime restores ~30,000 states/s on a quiet machine; allow a slow one 15x.
    return 60.0 + records / 2_000


async def baseline_rss(bootstrap: str, sim_url: str, opened: int, sample_s: float) -> float:
    """VmRSS (MiB) of the same worker holding ``opened`` open jobs and nothing finished."""
    state_dir = Path(tempfile.mkdtemp(prefix="state-open-", dir=WORKDIR))
    async with topics(bootstrap, "store-open", state_dir) as settings:
        states = States(Codec(), settings.topics.partitions, int(time.time() * 1000))
        await asyncio.to_thread(produce, settings, (states.opened(i) for i in range(opened)))
        worker = start_worker(settings, {"itron": itron_conn(sim_url, POLICY)}, "store-open")
        try:
            await ready(worker, "store-open", ready_timeout(opened))
            return await max_rss_mib(worker.pid, sample_s)
        finally:
            worker.stop()


async def measure(
    bootstrap: str,
    finished: int = FINISHED,
    opened: int = OPEN,
    sample_s: float = SAMPLE_S,
    progress: Callable[[str], None] = lambda _: None,
) -> StoreBench:
    if opened < TAIL:
        raise ValueError(f"the tail finishes {TAIL} open jobs: open must be at least {TAIL}")
    WORKDIR.mkdir(exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=WORKDIR))
    async with simulator("itron", stage_seconds=1e9, record=False) as sim_url:
        progress(f"baseline: a worker with {opened} open jobs only")
        base_mib = await baseline_rss(bootstrap, sim_url, opened, sample_s)
        async with topics(bootstrap, "store", state_dir) as settings:
            states = States(Codec(), settings.topics.partitions, int(time.time() * 1000))
            progress(f"writing {finished} finished + {opened} open states")
            started = time.monotonic()
            count, size = await asyncio.to_thread(produce, settings, states.initial(finished, opened))
            write_s = time.monotonic() - started
            progress(f"wrote {size / 2**20:.0f} MiB in {write_s:.1f} s; bare consumer")
            bare_s = await bare_read(settings)

            progress("cold takeover")
            conns = {"itron": itron_conn(sim_url, POLICY)}
            worker = start_worker(settings, conns, "store-cold")
            try:
                cold_s = await ready(worker, "store-cold", ready_timeout(count))
                ready_mib = rss_kib(worker.pid) / 1024
                assert worker.port is not None
                _, text = await scrape(worker.port)
                cold_restore_s = metric(text, "export_worker_restore_seconds_sum")
                restored = metric(text, "export_worker_restored_jobs_total")
                if restored < opened:
                    raise BenchFailed(f"the worker restored {restored:.0f} jobs, fewer than the {opened} open ones")
                progress(f"ready in {cold_s:.1f} s; RSS for {sample_s:.0f} s")
                peak_mib = max(ready_mib, await max_rss_mib(worker.pid, sample_s))
            finally:
                stop_s, code = stop(worker)

            progress(f"stopped in {stop_s:.1f} s (exit {code}); {TAIL} records from another writer")
            await asyncio.to_thread(produce, settings, states.tail(TAIL, finished))
            progress("warm takeover")
            worker = start_worker(settings, conns, "store-warm")
            try:
                warm_s = await ready(worker, "store-warm", ready_timeout(count + TAIL))
                assert worker.port is not None
                _, text = await scrape(worker.port)
                warm_restore_s = metric(text, "export_worker_restore_seconds_sum")
                warm_records = optional_metric(text, "export_worker_restored_records_total", {"mode": "warm"})
            finally:
                worker.stop()
    return StoreBench(
        finished=finished,
        open=opened,
        value_bytes=size,
        write_s=write_s,
        bare_s=bare_s,
        cold_ready_s=cold_s,
        cold_restore_s=cold_restore_s,
        cold_restored_jobs=restored,
        rss_ready_mib=ready_mib,
        rss_max_mib=peak_mib,
        baseline_rss_mib=base_mib,
        stop_s=stop_s,
        stop_code=code,
        warm_ready_s=warm_s,
        warm_restore_s=warm_restore_s,
        warm_records=warm_records,
    )


# ---- figures ------------------------------------------------------------------------------

RSS_TARGET_MIB = 400.0
COLD_TARGET_S = 30.0
COLD_RATIO_TARGET = 0.5
WARM_TARGET_S = 3.0


def rows(s: StoreBench) -> list[tuple[str, str, str, str, str]]:
    """(figure, export-worker, baseline, ratio, target) rows for the bench table."""
    warm_read = "records read n/a" if s.warm_records is None else f"{s.warm_records:.0f} records read"
    return [
        (
            f"RSS, {s.finished:,} finished + {s.open:,} open retained",
            f"{s.rss_max_mib:.0f} MiB ({s.retained_bytes_per_job:.0f} B per finished job)",
            f"{s.baseline_rss_mib:.0f} MiB: the same worker, {s.open:,} open only",
            f"{s.rss_max_mib / s.baseline_rss_mib:.2f}",
            f"<= {RSS_TARGET_MIB:.0f} MiB",
        ),
        (
            f"cold takeover of {s.records:,} states",
            f"{s.cold_restore_s:.1f} s assigned to polling ({s.cold_states_per_s:,.0f} states/s;"
            f" {s.cold_ready_s:.1f} s from process start)",
            f"{s.bare_states_per_s:,.0f} states/s bare consumer",
            f"{s.cold_ratio:.2f}",
            f"<= {COLD_TARGET_S:.0f} s, >= {COLD_RATIO_TARGET:.1f}",
        ),
        (
            f"warm takeover, {TAIL:,} new records",
            f"{s.warm_restore_s:.1f} s assigned to polling ({warm_read}; {s.warm_ready_s:.1f} s from process start)",
            f"cold takeover {s.cold_restore_s:.1f} s (after a stop of {s.stop_s:.1f} s, exit {s.stop_code})",
            f"{s.warm_restore_s / s.cold_restore_s:.2f}",
            f"<= {WARM_TARGET_S:.0f} s",
        ),
    ]


def lines(s: StoreBench) -> list[str]:
    """``name value target ok|miss`` lines; sizes other than 1m/50k name their size."""
    size = label(s.finished)
    warm = (
        f"warm_restored_records n/a =={TAIL} miss"
        if s.warm_records is None
        else f"warm_restored_records {s.warm_records:.0f} =={TAIL} {'ok' if s.warm_records == TAIL else 'miss'}"
    )

    def line(name: str, value: float, target: str, ok: bool, fmt: str) -> str:
        return f"{name} {fmt.format(value)} {target} {'ok' if ok else 'miss'}"

    return [
        line(
            f"rss_{size}_retained_mib",
            s.rss_max_mib,
            f"<={RSS_TARGET_MIB:.0f}",
            s.rss_max_mib <= RSS_TARGET_MIB,
            "{:.0f}",
        ),
        line(
            f"cold_takeover_{size}_s",
            s.cold_restore_s,
            f"<={COLD_TARGET_S:.1f}",
            s.cold_restore_s <= COLD_TARGET_S,
            "{:.1f}",
        ),
        line(
            "cold_takeover_ratio",
            s.cold_ratio,
            f">={COLD_RATIO_TARGET:.2f}",
            s.cold_ratio >= COLD_RATIO_TARGET,
            "{:.2f}",
        ),
        line(
            "warm_takeover_s", s.warm_restore_s, f"<={WARM_TARGET_S:.1f}", s.warm_restore_s <= WARM_TARGET_S, "{:.1f}"
        ),
        warm,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FINISHED:,} finished + {QUICK_OPEN:,} open")
    parser.add_argument("--finished", type=int)
    parser.add_argument("--open", type=int)
    args = parser.parse_args()
    from bench.common import broker
    from worker.observability import configure_logging

    configure_logging("error", "console")
    finished = args.finished or (QUICK_FINISHED if args.quick else FINISHED)
    opened = args.open or (QUICK_OPEN if args.quick else OPEN)
    started = time.monotonic()

    def progress(what: str) -> None:
        print(f"{time.monotonic() - started:5.0f}s {what}", flush=True)

    with broker() as bootstrap:
        s = asyncio.run(measure(bootstrap, finished, opened, QUICK_SAMPLE_S if args.quick else SAMPLE_S, progress))
    print(s)
    for row in rows(s):
        print(" | ".join(row))
    for figure in lines(s):
        print(figure)


if __name__ == "__main__":
    main()
