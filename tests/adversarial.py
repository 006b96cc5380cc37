"""Adversarial run: two worker processes on one broker against the four simulators, fed
normal requests, fuzzed requests, poison records and hostile vendor answers, while
partitions move right after bursts of submits.

    python -m tests.adversarial [--normal 200] [--fuzzed 200] [--hostile 80] [--seed 1]   (make chaos)

Phases (one broker, one fleet throughout):
  1. poison records (garbage bytes, a wrong schema fingerprint, an empty and a null value,
     a key other than the request id, a value over the request limit) and a burst of
     normal requests on every vendor; as soon as the burst's first intents are written a
     third worker joins, and at the first SUBMITTED a worker is SIGKILLed and restarted;
  2. fuzzed requests (worker.testing.fuzzed_requests; records the producer refuses as
     too large are skipped and counted);
  3. once every normal request has ended: hostile vendors: the simulators' FaultPlan
     gets hostile fields (those it does not have yet are skipped, printed as
     "hostile: fields missing"), raw answers queued through answer_next (empty, null,
     wrong JSON shapes, HTML, a large body), then a burst of hostile requests; the third
     worker is stopped with SIGTERM right after that burst (it must exit promptly).

Ends with one line:
    adversarial: normal=N/N succeeded hostile=H/H ended fuzzed=F/F ended (skipped S)
                 poison=P/P dead-lettered crashes=0 duplicate_events=0 out_of_order=0
                 membership_changes=M seconds=T
and exits non-zero when a check fails: every normal request SUCCEEDED, every hostile
and fuzzed request ended (a terminal status, or a dead letter at its offset), every
poison record dead-lettered with its expected reason, no worker died on its own or hung
at shutdown, no duplicate or out-of-order status event, every vendor job created twice
announced possible_duplicate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fleet import (
    TERMINAL,
    Rig,
    RigConfig,
    duplicates,
    itron_owners,
    make_request,
    rig,
    sequence_problems,
)
from worker.codec import SOE_MAGIC, Codec
from worker.output_reader import Output
from worker.publisher import Publisher
from worker.simulators.faults import FaultPlan
from worker.testing import OutputReader, eventually, fuzzed_requests

# The hostile fields another branch adds to FaultPlan, and the values this run sets
# (besides the fields every FaultPlan has). Per vendor, a different Retry-After text.
HOSTILE_FAULTS: dict[str, Any] = {
    "huge": 0.05,
    "huge_bytes": 8_000_000,
    "huge_chunked": True,
    "next_huge": 1,
    "hang": 0.03,
    "next_hang": 1,
    "garbage_json": 0.05,
    "next_garbage_json": 1,
    "wrong_shape": 0.05,
    "next_wrong_shape": 1,
    "wrong_content_type": 0.05,
    "next_wrong_content_type": 1,
    "hostile_on": "all",
}
RETRY_AFTER_RAW = {
    "itron": "Infinity",
    "opengate": "Fri, 31 Dec 9999 23:59:59 GMT",
    "elasticpath": "NaN",
    "unicommerce": "-1",
}
EXISTING_HOSTILE = {"next_429": 3, "retry_after_s": 1.0, "malformed": 0.03, "rate_5xx": 0.05}
# Raw answers queued for each simulator's next API calls.
CANNED: list[tuple[int, str, str]] = [
    (200, "", "application/json"),
    (200, "null", "application/json"),
    (200, "[]", "application/json"),
    (200, '{"data": {"id": null, "status": 42}}', "application/json"),
    (200, '"just a string"', "application/json"),
    (200, "<html><body>maintenance</body></html>", "text/html"),
    (502, "x" * 200_000, "text/plain"),
]


@dataclass
class AdversarialConfig:
    normal: int = 200
    fuzzed: int = 200
    hostile: int = 80
    seed: int = 1
    partitions: int = 6
    deadline_s: float = 300.0
    workdir: Path = Path(".adversarial")
    stages_s: tuple[float, float, float] = (0.3, 0.3, 0.3)
    fuzz_max_bytes: int = 262_144
    request_limit: int = 262_144  # the workers' max_request_bytes (the default)
    # Hostile vendors send Retry-After far in the future: the workers cut it to this (the
    # bound is what is tested; the default 600 s would outlast the run).
    max_retry_after_s: float = 5.0


@dataclass
class AdversarialResult:
    normal: int
    normal_succeeded: int
    hostile: int
    hostile_ended: int
    fuzzed: int
    fuzzed_ended: int
    fuzzed_skipped: int
    poison: int
    poison_dead_lettered: int
    crashes: int
    duplicate_events: int
    out_of_order: int
    membership_changes: int
    unflagged_duplicates: int
    vendor_duplicates: dict[str, int]
    hostile_missing: list[str]
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.normal_succeeded == self.normal
            and self.hostile_ended == self.hostile
            and self.fuzzed_ended == self.fuzzed - self.fuzzed_skipped
            and self.poison_dead_lettered == self.poison
            and self.crashes == 0
            and self.duplicate_events == 0
            and self.out_of_order == 0
            and self.unflagged_duplicates == 0
            and self.vendor_duplicates.get("other", 0) == 0
            and not any(p.startswith("shutdown:") for p in self.problems)
        )

    def line(self) -> str:
        return (
            f"adversarial: normal={self.normal_succeeded}/{self.normal} succeeded "
            f"hostile={self.hostile_ended}/{self.hostile} ended "
            f"fuzzed={self.fuzzed_ended}/{self.fuzzed - self.fuzzed_skipped} ended (skipped {self.fuzzed_skipped}) "
            f"poison={self.poison_dead_lettered}/{self.poison} dead-lettered crashes={self.crashes} "
            f"duplicate_events={self.duplicate_events} out_of_order={self.out_of_order} "
            f"duplicates_by_cause={','.join(f'{k}:{v}' for k, v in self.vendor_duplicates.items())} "
            f"membership_changes={self.membership_changes} seconds={self.seconds:.0f}"
        )


class TracingPublisher(Publisher):
    """A Publisher whose raw records report where they landed (partition, offset)."""

    async def deliver(self, value: bytes | None, *, key: bytes | None) -> asyncio.Future[Any]:
        assert self._producer is not None
        return await self._producer.produce(self.settings.topics.requests, value=value, key=key)


@dataclass
class Sent:
    """A record published, and where it landed (None: the producer refused it)."""

    name: str
    request_id: str | None
    expected: str | None  # the dead letter's reason_code it must get (poison records)
    future: asyncio.Future[Any]
    where: tuple[int, int] | None = None
    refused: str | None = None

    async def settle(self) -> None:
        try:
            msg = await self.future
            self.where = (msg.partition(), msg.offset())
        except Exception as exc:  # the producer's delivery report: too large, mostly
            self.refused = f"{type(exc).__name__}: {exc}"[:200]


def poison_records(
    codec: Codec, topic: str, run: str, request_limit: int
) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(name, key, value, expected reason_code) of records no worker may choke on."""
    valid = make_request(f"p{run}-key", "itron", tenant="adv")
    encoded = codec.encode("ExportRequested", valid, topic=topic)
    wrong_fingerprint = SOE_MAGIC + bytes(8) + encoded[len(SOE_MAGIC) + 8 :]
    huge = make_request(f"p{run}-huge", "itron", tenant="adv")
    huge["labels"] = {"filler": "x" * (request_limit + 4096)}
    return [
        ("garbage", f"p{run}-garbage".encode(), b"\x07\xffnot avro at all\x00" * 8, "not_avro"),
        ("wrong_fingerprint", f"p{run}-fp".encode(), wrong_fingerprint, "unknown_schema"),
        ("empty_value", f"p{run}-empty".encode(), b"", "not_avro"),
        ("null_value", f"p{run}-null".encode(), None, "not_avro"),
        ("wrong_key", b"somebody-else", encoded, "key_mismatch"),
        ("huge_value", f"p{run}-huge".encode(), codec.encode("ExportRequested", huge, topic=topic), "oversize"),
    ]


def set_hostile(r: Rig, say: Callable[[str], Any]) -> list[str]:
    """Hostile faults on every simulator: the fields its FaultPlan has; returns the missing ones."""
    have = {f.name for f in dataclasses.fields(FaultPlan)}
    wanted = {**HOSTILE_FAULTS, "retry_after_raw": ""}
    missing = sorted(set(wanted) - have)
    if missing:
        say(f"adversarial: hostile: fields missing {missing} (skipped; this FaultPlan predates them)")
    for vendor, sim in r.sims.items():
        plan = {k: v for k, v in HOSTILE_FAULTS.items() if k in have}
        if "retry_after_raw" in have:
            plan["retry_after_raw"] = RETRY_AFTER_RAW.get(vendor, "Infinity")
        sim.faults.plan.update({**EXISTING_HOSTILE, **plan})
        for status, body, content_type in CANNED:
            sim.answer_next(status, body, content_type)
    return missing


def clear_hostile(r: Rig) -> None:
    fresh = FaultPlan()
    for sim in r.sims.values():
        sim.faults.plan.update({k: v for k, v in fresh.as_dict().items()})
        sim.canned.clear()


def dead_letters(out: Output) -> dict[tuple[int, int], dict[str, Any]]:
    """Dead letters by the (partition, offset) of the record they stand for."""
    return {(d["partition"], d["offset"]): d for d in out.dlq}


def ended(sent: Sent, out: Output, dead: dict[tuple[int, int], dict[str, Any]]) -> bool:
    """A record ended: a dead letter at its offset, or its request reached a terminal status."""
    if sent.where is not None and sent.where in dead:
        return True
    return sent.request_id is not None and out.last_status().get(sent.request_id) in TERMINAL


async def run_adversarial(
    cfg: AdversarialConfig, *, bootstrap: str | None = None, say: Callable[[str], Any] = print
) -> AdversarialResult:
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    outer_say = say

    def say(text: str) -> Any:  # every line says when, in seconds since the start
        return outer_say(f"[{time.monotonic() - started:5.1f}] {text}")

    problems: list[str] = []
    membership = 0
    missing: list[str] = []
    codec = Codec()
    rig_cfg = RigConfig(
        name="adv",
        partitions=cfg.partitions,
        seed=cfg.seed,
        workdir=cfg.workdir,
        stages_s=cfg.stages_s,
        max_retry_after_s=cfg.max_retry_after_s,
    )
    async with rig(rig_cfg, bootstrap=bootstrap) as r:
        fleet, settings = r.fleet, r.settings
        fleet.rng = rng
        vendors = sorted(r.sims)
        normal_ids = [f"n{r.run}-{i:05d}" for i in range(cfg.normal)]
        hostile_ids = [f"h{r.run}-{i:05d}" for i in range(cfg.hostile)]
        say(f"adversarial: {cfg.normal} normal, {cfg.fuzzed} fuzzed, {cfg.hostile} hostile requests; logs in {r.logs}")
        fleet.start(0)
        fleet.start(1)
        deadline = started + cfg.deadline_s
        async with TracingPublisher(settings, codec) as pub, OutputReader(settings, include_jobs=False) as reader:

            async def wait(what: str, done: Callable[[Output], bool]) -> Output:
                while True:
                    out = await reader.read()
                    fleet.note_crashes()
                    if done(out):
                        return out
                    if time.monotonic() > deadline:
                        problems.append(f"deadline: {what} not reached")
                        say(f"adversarial: deadline passed waiting for {what}")
                        return out
                    fleet.revive_exited()
                    await asyncio.sleep(0.2)

            def statuses(ids: list[str], wanted: set[str]) -> Callable[[Output], bool]:
                ids_set = set(ids)
                return lambda out: any(e["status"] in wanted and e["request_id"] in ids_set for e in out.status)

            # ---- 1. poison, and a burst of normal requests moved right after its intents
            topic = settings.topics.requests
            poison = [
                Sent(name, None, expected, await pub.deliver(value, key=key))
                for name, key, value, expected in poison_records(codec, topic, r.run, cfg.request_limit)
            ]
            for i, rid in enumerate(normal_ids):
                await pub.send(make_request(rid, vendors[i % len(vendors)], tenant="adv"))
            await pub.flush()
            for sent in poison:
                await sent.settle()
            await wait("the burst's first intents", statuses(normal_ids, {"ACCEPTED", "SUBMITTED"}))
            fleet.start(2)  # a third member: partitions move while submits are in flight
            membership += 1
            say("adversarial: burst accepted; a third worker joins")
            await wait("the burst's first SUBMITTED", statuses(normal_ids, {"SUBMITTED"}))
            fleet.kill(0)
            fleet.start(0)
            membership += 2
            say("adversarial: first SUBMITTED; SIGKILL worker 0 and restart it")

            # ---- 2. fuzzed requests
            fuzzed: list[Sent] = []
            skipped = 0
            for i, fz in enumerate(
                fuzzed_requests(r.connections, count=cfg.fuzzed, seed=cfg.seed, max_bytes=cfg.fuzz_max_bytes)
            ):
                value = codec.encode("ExportRequested", fz.record, topic=topic)
                rid = fz.record["request_id"]
                fuzzed.append(Sent(f"fuzz-{i}", rid, None, await pub.deliver(value, key=fz.key)))
            await pub.flush()
            for sent in fuzzed:
                await sent.settle()
                if sent.refused is not None:
                    skipped += 1
            say(f"adversarial: {len(fuzzed)} fuzzed records published, {skipped} refused by the producer (skipped)")

            def normal_done(out: Output) -> bool:
                last = out.last_status()
                return all(last.get(rid) in TERMINAL for rid in normal_ids)

            if normal_done(await wait("every normal request terminal", normal_done)):
                say("adversarial: every normal request ended")

            # ---- 3. hostile vendors
            missing = set_hostile(r, say)
            for i, rid in enumerate(hostile_ids):
                await pub.send(make_request(rid, vendors[i % len(vendors)], tenant="adv"))
            await pub.flush()
            await wait("the hostile burst's first intents", statuses(hostile_ids, {"ACCEPTED", "SUBMITTED"}))
            t0 = time.monotonic()
            code = await asyncio.to_thread(fleet.terminate, 2)
            took = time.monotonic() - t0
            membership += 1
            say(f"adversarial: hostile burst accepted; SIGTERM worker 2: exit {code} after {took:.1f} s")
            if code not in (0, -signal.SIGTERM) or took > settings.shutdown_grace_s + 10:
                problems.append(f"shutdown: worker 2 exited {code} after {took:.1f} s on SIGTERM")

            # A worker stopped while it restores the partitions it was just given must
            # exit promptly (one hung retrying a restore against its closed consumer).
            fleet.start(3, log_level="info")
            membership += 1
            try:
                await eventually(lambda: fleet.log_says(3, "partitions assigned"), timeout=60, what="worker 3 assigned")
            except TimeoutError as exc:
                problems.append(f"deadline: {exc}")
            mid_restore = not fleet.log_says(3, "partitions restored")
            t0 = time.monotonic()
            code = await asyncio.to_thread(fleet.terminate, 3)
            took = time.monotonic() - t0
            membership += 1
            when = "mid-restore" if mid_restore else "restored"
            say(f"adversarial: worker 3 got partitions; SIGTERM at once ({when}): exit {code} after {took:.1f} s")
            if code not in (0, -signal.SIGTERM) or took > settings.shutdown_grace_s + 10:
                problems.append(f"shutdown: worker 3, stopped while restoring, exited {code} after {took:.1f} s")

            def hostile_done(out: Output) -> bool:
                last = out.last_status()
                return all(last.get(rid) in TERMINAL for rid in hostile_ids)

            if hostile_done(await wait("every hostile request terminal", hostile_done)):
                say("adversarial: every hostile request ended")
            clear_hostile(r)
            out = await reader.read()
            pending = [s for s in fuzzed if s.refused is None and not ended(s, out, dead_letters(out))]
            if pending:
                shown = [
                    (s.name, (s.request_id or "")[:30], out.statuses(s.request_id or "")[-3:]) for s in pending[:4]
                ]
                say(f"adversarial: {len(pending)} fuzzed records still open, e.g. {shown}")

            await wait(
                "every fuzzed record ended",
                lambda out: all(ended(s, out, dead_letters(out)) for s in fuzzed if s.refused is None),
            )
            out = await wait(
                "every poison record dead-lettered", lambda out: all(s.where in dead_letters(out) for s in poison)
            )
            say("adversarial: done waiting; SIGTERM the fleet")
    # ---- the checks
    dead = dead_letters(out)
    last = out.last_status()
    normal_ok = sum(1 for rid in normal_ids if last.get(rid) == "SUCCEEDED")
    for rid in normal_ids:
        if last.get(rid) != "SUCCEEDED":
            errors = [e.get("error") for e in out.events(rid) if e.get("error")]
            problems.append(f"{rid}: normal request ended {last.get(rid)} {errors[-1:]}")
    hostile_ok = sum(1 for rid in hostile_ids if last.get(rid) in TERMINAL)
    problems += [
        f"{rid}: hostile request not ended (last {last.get(rid)})"
        for rid in hostile_ids
        if last.get(rid) not in TERMINAL
    ]
    fuzzed_ok = sum(1 for s in fuzzed if s.refused is None and ended(s, out, dead))
    problems += [
        f"{s.name} ({s.request_id!r:.60}): not ended (last {last.get(s.request_id or '')})"
        for s in fuzzed
        if s.refused is None and not ended(s, out, dead)
    ]
    poison_ok = 0
    for s in poison:
        letter = dead.get(s.where) if s.where is not None else None
        if letter is not None and letter["reason_code"] == s.expected and letter["reason"]:
            poison_ok += 1
        else:
            got = (letter["reason_code"], letter["reason"][:100]) if letter else None
            problems.append(f"poison {s.name}: expected a {s.expected} dead letter, got {got} ({s.refused})")
    tracked = normal_ids + hostile_ids
    dup_events, out_of_order, order_problems = sequence_problems(tracked, out)
    problems += order_problems
    dups = duplicates(tracked, out, r.sims, itron_owners(tracked, "adv"), r.kill_windows(), r.fleet.lives)
    problems += [p for p in dups.problems if "never flagged" in p]
    say(f"adversarial: the fleet exited with {r.exit_codes} on SIGTERM after {r.stop_seconds:.1f} s")
    if any(code not in (0, -signal.SIGTERM) for code in r.exit_codes):
        problems.append(f"shutdown: workers exited with {r.exit_codes} on SIGTERM")
    if r.stop_seconds > settings.shutdown_grace_s + 10:
        problems.append(f"shutdown: the fleet took {r.stop_seconds:.1f} s to exit on SIGTERM")
    for slot, code in fleet.crashes:
        problems.append(f"crash: worker {slot} exited {code} on its own: {fleet.last_error(slot)}")
    hostile_statuses = Counter(last.get(rid, "NONE") for rid in hostile_ids)
    fuzz_dead = sum(1 for s in fuzzed if s.where in dead)
    say(
        f"adversarial: faults injected {r.injected()}; hostile ended {dict(hostile_statuses)}; "
        f"fuzzed dead-lettered {fuzz_dead}, the rest by status; vendor jobs created twice {dups.by_cause}"
    )
    return AdversarialResult(
        normal=len(normal_ids),
        normal_succeeded=normal_ok,
        hostile=len(hostile_ids),
        hostile_ended=hostile_ok,
        fuzzed=len(fuzzed),
        fuzzed_ended=fuzzed_ok,
        fuzzed_skipped=skipped,
        poison=len(poison),
        poison_dead_lettered=poison_ok,
        crashes=len(fleet.crashes),
        duplicate_events=dup_events,
        out_of_order=out_of_order,
        membership_changes=membership + len(fleet.crashes),
        unflagged_duplicates=dups.vendor_jobs - dups.flagged,
        vendor_duplicates=dups.by_cause,
        hostile_missing=list(missing),
        seconds=time.monotonic() - started,
        problems=problems,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal", type=int, default=200)
    parser.add_argument("--fuzzed", type=int, default=200)
    parser.add_argument("--hostile", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path, default=Path(".adversarial"))
    args = parser.parse_args()
    from worker.observability import configure_logging

    configure_logging("error", "console")
    cfg = AdversarialConfig(
        normal=args.normal,
        fuzzed=args.fuzzed,
        hostile=args.hostile,
        seed=args.seed,
        partitions=args.partitions,
        deadline_s=args.deadline,
        workdir=args.workdir,
    )
    result = asyncio.run(run_adversarial(cfg, bootstrap=os.environ.get("KAFKA_BOOTSTRAP")))
    for problem in result.problems[:20]:
        print(f"  problem: {problem}")
    print(json.dumps({"vendor_duplicates": result.vendor_duplicates, "hostile_missing": result.hostile_missing}))
    print(result.line())
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
