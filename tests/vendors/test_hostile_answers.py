"""Every adapter against a hostile vendor (the simulators' hostile-vendor mode, real HTTP):
huge answers, answers that never come, invalid JSON, JSON of the wrong shape, the wrong
media type, nonsense Retry-After, and token endpoints that fail. Each call ends with a
classified ``VendorError`` (retriable, a bounded reason without secrets), within its
timeout, and the adapter works again afterwards."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.vendors.conftest import token_connection
from worker.engine.model import CallKind, PollAnswered, SubmitAnswered
from worker.errors import AnswerTooLarge, MalformedAnswer, RateLimited, VendorError, VendorUnavailable
from worker.ingest import jsonable
from worker.limits import DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_RETRY_AFTER_S
from worker.result_store import FileResultStore
from worker.runtime.calls import failure_event
from worker.simulators import available, module, simulator_class
from worker.simulators.base import Simulator, Timing
from worker.simulators.faults import GARBAGE_JSON, WRONG_CONTENT_TYPES, WRONG_SHAPES
from worker.testing import eventually
from worker.vendors import HttpClient, JobSpec, adapter_class, build_adapter

TIMEOUT_S = 0.5
# The demo credentials of every simulator: none may appear in an error.
CREDENTIALS = ("demo-secret", "demo-password", "demo-api-key")
MAX_REASON_CHARS = 1_000

# hostile kind -> (faults to set, calls that meet it, the error expected)
KINDS: dict[str, tuple[dict[str, Any], int, type[VendorError]]] = {
    "huge": ({"next_huge": 1}, 1, AnswerTooLarge),
    "huge_chunked": ({"next_huge": 1, "huge_chunked": True}, 1, AnswerTooLarge),
    "hang": ({"next_hang": 1}, 1, VendorUnavailable),
    "garbage_json": ({"next_garbage_json": len(GARBAGE_JSON)}, len(GARBAGE_JSON), MalformedAnswer),
    "wrong_shape": ({"next_wrong_shape": len(WRONG_SHAPES)}, len(WRONG_SHAPES), MalformedAnswer),
    "wrong_content_type": (
        {"next_wrong_content_type": len(WRONG_CONTENT_TYPES)},
        len(WRONG_CONTENT_TYPES),
        MalformedAnswer,
    ),
}
CALLS = ("token", "submit", "poll")


@dataclass
class Vendor:
    """One vendor's simulator and an adapter talking to it (with a token endpoint)."""

    name: str
    sim: Simulator
    adapter: Any
    requests: int = 0

    def spec(self) -> JobSpec:
        """A fresh request of the simulator's sample job."""
        self.requests += 1
        job = jsonable(module(self.name).sample_job())
        return JobSpec(f"hostile-{self.requests}", "acme", self.name, job)

    def secrets(self) -> list[str]:
        issued = [*self.sim.tokens, *getattr(self.sim, "refresh_tokens", {})]
        return [*CREDENTIALS, *issued]

    def forget_token(self) -> None:
        """The adapter has to ask the token endpoint again before its next call."""
        token = self.adapter.token
        token._token = None
        token._refresh_token = None


async def running(name: str, session: HttpClient, tmp_path: Path) -> AsyncIterator[Vendor]:
    sim = simulator_class(name)(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=3)
    await sim.start()
    try:
        conn = token_connection(name, sim.base_url, timeout_s=TIMEOUT_S)
        adapter = build_adapter(name, conn, session, result_store=FileResultStore(tmp_path / "results"))
        assert adapter.token is not None, f"{name}: the test expects a token endpoint"
        yield Vendor(name, sim, adapter)
    finally:
        await sim.stop()


@pytest.fixture(params=available())
async def vendor(request: Any, session: HttpClient, tmp_path: Path) -> AsyncIterator[Vendor]:
    async for running_vendor in running(request.param, session, tmp_path):
        yield running_vendor


@pytest.fixture(params=[v for v in available() if hasattr(adapter_class(v), "collect")])
async def downloader(request: Any, session: HttpClient, tmp_path: Path) -> AsyncIterator[Vendor]:
    """A vendor whose result the worker downloads (collects) itself."""
    async for running_vendor in running(request.param, session, tmp_path):
        yield running_vendor


async def ask(vendor: Vendor, call: str, spec: JobSpec, job_id: str | None) -> Any:
    if call == "poll":
        assert job_id is not None
        return await vendor.adapter.poll(spec, job_id)
    return await vendor.adapter.submit(spec)


def assert_classified(vendor: Vendor, exc: BaseException, kind: CallKind, expected: type[VendorError]) -> None:
    """A VendorError of the expected class that the runtime maps as it is: retriable, its
    reason bounded and free of credentials and tokens."""
    assert isinstance(exc, expected), f"{type(exc).__name__}: {exc}"
    assert exc.retriable
    assert 0 < len(exc.message) <= MAX_REASON_CHARS
    leaked = [s for s in vendor.secrets() if s in exc.message]
    assert leaked == [], exc.message
    event = failure_event(kind, exc)  # type: ignore[arg-type]
    assert event.error.code == exc.code and event.error.retryable  # not "adapter_error"


class TestEveryHostileAnswer:
    @pytest.mark.parametrize("call", CALLS)
    @pytest.mark.parametrize("kind", list(KINDS))
    async def test_each_call_ends_with_a_classified_error_in_time(self, vendor: Vendor, call: str, kind: str) -> None:
        faults, meetings, expected = KINDS[kind]
        spec = vendor.spec()
        job_id: str | None = None
        if call == "poll":
            submitted = await vendor.adapter.submit(spec)
            job_id = submitted.vendor_job_id
        vendor.sim.faults.plan.update({"hostile_on": call, **faults})
        for _ in range(meetings):
            if call == "token":
                vendor.forget_token()
            started = time.monotonic()
            with pytest.raises(VendorError) as caught:
                await ask(vendor, call, spec if call == "poll" else vendor.spec(), job_id)
            # Never beyond its timeout: one call, or a token fetch and one call.
            assert time.monotonic() - started < 2 * TIMEOUT_S + 1.0
            assert_classified(vendor, caught.value, CallKind.POLL if call == "poll" else CallKind.SUBMIT, expected)
            if call == "token":
                assert caught.value.outcome_unknown is False, "a submit without a token was never sent"
            elif call == "submit":
                # A 2xx the worker cannot read, or no answer at all: a job may exist.
                assert caught.value.outcome_unknown is True
        injected = kind.replace("_chunked", "")
        assert vendor.sim.faults.injected.get(injected) == meetings
        # The faults are spent and the connection pool is healthy: the adapter works again.
        again = await ask(vendor, call, spec if call == "poll" else vendor.spec(), job_id)
        assert isinstance(again, PollAnswered if call == "poll" else SubmitAnswered)

    async def test_the_reason_names_the_limit(self, vendor: Vendor) -> None:
        vendor.sim.faults.plan.update({"hostile_on": "submit", "next_huge": 1, "huge_chunked": True})
        with pytest.raises(AnswerTooLarge, match=f"answer larger than {DEFAULT_MAX_ANSWER_BYTES} bytes"):
            await vendor.adapter.submit(vendor.spec())


class TestDownloads:
    """A result the worker collects itself (OpenGate's operations listing): a hostile
    listing is a classified error of the poll that collects it."""

    @pytest.mark.parametrize("kind", list(KINDS))
    async def test_a_hostile_result_listing(self, downloader: Vendor, kind: str) -> None:
        vendor = downloader
        faults, meetings, expected = KINDS[kind]
        spec = vendor.spec()
        job_id = (await vendor.adapter.submit(spec)).vendor_job_id
        sim: Any = vendor.sim
        await eventually(
            lambda: sim.status(sim.jobs[job_id], time.monotonic()) == "FINISHED", timeout=5, what="job finished"
        )
        vendor.sim.faults.plan.update({"hostile_on": "download", **faults})
        for _ in range(meetings):
            started = time.monotonic()
            with pytest.raises(VendorError) as caught:
                await vendor.adapter.poll(spec, job_id)
            assert time.monotonic() - started < 2 * TIMEOUT_S + 1.0
            assert_classified(vendor, caught.value, CallKind.POLL, expected)
        done = await vendor.adapter.poll(spec, job_id)
        assert done.status.terminal and done.file is not None


class TestHostileRetryAfter:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("Infinity", None),
            ("nan", None),
            ("-5", None),
            ("1e309", None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", DEFAULT_MAX_RETRY_AFTER_S),
            ("86400", DEFAULT_MAX_RETRY_AFTER_S),
            ("3", 3.0),
        ],
    )
    async def test_a_429_on_a_poll(self, vendor: Vendor, raw: str, expected: float | None) -> None:
        """The exact header text reaches the adapter; it keeps only a finite delay within the cap."""
        spec = vendor.spec()
        job_id = (await vendor.adapter.submit(spec)).vendor_job_id
        vendor.sim.faults.plan.update({"retry_after_raw": raw, "next_429": 1})
        with pytest.raises(RateLimited) as caught:
            await vendor.adapter.poll(spec, job_id)
        assert caught.value.retry_after == expected
        assert caught.value.outcome_unknown is False
        event = failure_event(CallKind.POLL, caught.value)
        assert event.retry_after_s == expected


class TestTokenFailures:
    """A submit whose token could not be obtained was never sent (outcome_unknown=False),
    so the engine retries it plainly instead of treating it as possibly created."""

    async def test_the_token_endpoint_times_out(self, vendor: Vendor) -> None:
        vendor.sim.faults.plan.update({"hostile_on": "token", "next_hang": 1})
        with pytest.raises(VendorUnavailable) as caught:
            await vendor.adapter.submit(vendor.spec())
        assert caught.value.outcome_unknown is False
        assert "not sent" in caught.value.message
        event = failure_event(CallKind.SUBMIT, caught.value)
        assert event.outcome_unknown is False and event.error.retryable
        assert vendor.sim.jobs == {}

    async def test_the_token_refresh_after_a_401_fails(self, vendor: Vendor) -> None:
        """The first attempt was refused (401) and the retry never left: nothing was created."""
        await vendor.adapter.submit(vendor.spec())  # holds a token now
        jobs = len(vendor.sim.jobs)
        vendor.sim.faults.plan.update({"next_401": 1, "hostile_on": "token", "next_hang": 1})
        with pytest.raises(VendorUnavailable) as caught:
            await vendor.adapter.submit(vendor.spec())
        assert caught.value.outcome_unknown is False
        assert failure_event(CallKind.SUBMIT, caught.value).outcome_unknown is False
        assert len(vendor.sim.jobs) == jobs

    async def test_a_submit_that_was_sent_still_says_it_may_have_acted(self, vendor: Vendor) -> None:
        """The other side of the rule: a submit that timed out at the vendor stays unknown."""
        await vendor.adapter.submit(vendor.spec())
        vendor.sim.faults.plan.update({"hostile_on": "submit", "next_hang": 1})
        with pytest.raises(VendorUnavailable) as caught:
            await vendor.adapter.submit(vendor.spec())
        assert caught.value.outcome_unknown is True


class TestSimulatorHostileMode:
    """The hostile faults as the adversarial suite drives them: through ``/_sim/faults``."""

    async def test_the_control_endpoint_takes_every_hostile_field(
        self, vendor: Vendor, probe: aiohttp.ClientSession
    ) -> None:
        fields = {
            "retry_after_raw": "Infinity",
            "huge": 0.0,
            "next_huge": 1,
            "huge_bytes": 1000,
            "huge_chunked": True,
            "hang": 0.0,
            "next_hang": 0,
            "garbage_json": 0.0,
            "next_garbage_json": 0,
            "wrong_shape": 0.0,
            "next_wrong_shape": 0,
            "wrong_content_type": 0.0,
            "next_wrong_content_type": 0,
            "hostile_on": "poll",
        }
        async with probe.post(f"{vendor.sim.base_url}/_sim/faults", json=fields) as answer:
            assert answer.status == 200
            plan = (await answer.json())["faults"]
        assert {k: plan[k] for k in fields} == fields
        async with probe.post(f"{vendor.sim.base_url}/_sim/faults", json={"hostile_on": "everything"}) as answer:
            assert answer.status == 400
        async with probe.post(
            f"{vendor.sim.base_url}/_sim/faults", json={"retry_after_raw": "1\r\nX-Evil: 1"}
        ) as answer:
            assert answer.status == 400
        assert vendor.sim.faults.plan.hostile_on == "poll"

    async def test_hostile_faults_hit_only_the_calls_named(self, vendor: Vendor) -> None:
        """A counter for polls is not spent by a submit or by the token fetch before it."""
        vendor.sim.faults.plan.update({"hostile_on": "poll", "next_garbage_json": 1})
        spec = vendor.spec()
        job_id = (await vendor.adapter.submit(spec)).vendor_job_id
        assert vendor.sim.faults.plan.next_garbage_json == 1
        with pytest.raises(MalformedAnswer):
            await vendor.adapter.poll(spec, job_id)
        assert vendor.sim.faults.injected == {"garbage_json": 1}

    async def test_a_huge_answer_is_streamed_whole(self, vendor: Vendor, probe: aiohttp.ClientSession) -> None:
        """With a Content-Length, or chunked without one: exactly huge_bytes of JSON-ish text."""
        method, path = await token_route(vendor)
        for chunked in (False, True):
            vendor.sim.faults.plan.update(
                {"hostile_on": "all", "next_huge": 1, "huge_bytes": 3_000_000, "huge_chunked": chunked}
            )
            async with probe.request(method, f"{vendor.sim.base_url}{path}") as answer:
                assert answer.status == 200 and answer.content_type == "application/json"
                assert (answer.content_length is None) is chunked
                size, first = 0, b""
                async for chunk in answer.content.iter_chunked(1 << 16):
                    first = first or chunk
                    size += len(chunk)
            assert size == 3_000_000 and first.startswith(b'{"padding": "')

    async def test_fifty_megabytes_are_never_in_memory_at_once(
        self, vendor: Vendor, probe: aiohttp.ClientSession
    ) -> None:
        """The simulator streams the default huge answer, and the adapter stops reading at
        its limit: neither side holds the 50 MB (peak traced memory far below it)."""
        method, path = await token_route(vendor)
        spec = vendor.spec()
        tracemalloc.start()
        try:
            vendor.sim.faults.plan.update({"hostile_on": "all", "next_huge": 1, "huge_chunked": True})
            size = 0
            async with probe.request(method, f"{vendor.sim.base_url}{path}") as answer:
                async for chunk in answer.content.iter_chunked(1 << 16):
                    size += len(chunk)
            vendor.sim.faults.plan.update({"hostile_on": "submit", "next_huge": 1})
            with pytest.raises(AnswerTooLarge):
                await vendor.adapter.submit(spec)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert size == vendor.sim.faults.plan.huge_bytes == 50_000_000
        assert peak < 2 * DEFAULT_MAX_ANSWER_BYTES + 4_000_000

    async def test_a_hang_never_answers_and_never_delays_a_shutdown(self, vendor: Vendor) -> None:
        method, path = await token_route(vendor)
        vendor.sim.faults.plan.update({"hostile_on": "all", "next_hang": 1})
        async with aiohttp.ClientSession() as own:
            pending = asyncio.create_task(own.request(method, f"{vendor.sim.base_url}{path}"))
            await eventually(lambda: vendor.sim.faults.injected.get("hang") == 1, timeout=5, what="hang")
            assert not pending.done()
            started = time.monotonic()
            await vendor.sim.stop()
            assert time.monotonic() - started < 2.0
            with pytest.raises(aiohttp.ClientError):
                await pending


async def token_route(vendor: Vendor) -> tuple[str, str]:
    """(method, path) of the simulator's token endpoint: the first call a fresh adapter makes."""
    await vendor.adapter.submit(vendor.spec())
    first = vendor.sim.requests[0]
    assert vendor.sim.call_kind(_Request(first["method"], first["path"])) == "token"  # type: ignore[arg-type]
    return first["method"], first["path"]


@dataclass
class _Request:
    method: str
    path: str
