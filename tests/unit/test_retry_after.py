"""Hostile Retry-After values and delays (no I/O): a vendor's Retry-After is a finite
delay within EXPORT_WORKER_MAX_RETRY_AFTER_S or it is ignored, and nothing the engine
is given can make it schedule beyond a finite bound or raise."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_engine import NOW, POLICY, active, ctx, submitting
from worker.engine.machine import step
from worker.engine.model import CallFailed, CallKind, ErrorInfo, JobState, Phase, Status, SubmitAnswered
from worker.engine.policy import MAX_DELAY_S, Policy, at, duration_ms, poll_delay_s, retry_delay_s
from worker.errors import RateLimited, VendorError
from worker.limits import DEFAULT_MAX_RETRY_AFTER_S
from worker.runtime.calls import DEFAULT_RATE_LIMIT_WAIT_S, connection_wait_s, failure_event
from worker.scheduler import Limiter
from worker.vendors.http import Answer, HttpLimits, VendorHttp, parse_retry_after

HOSTILE = ("Infinity", "inf", "-inf", "nan", "NaN", "1e309", "-5", "-0.5", "soon", "", "  ", "1" * 400, "0x10")
FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


def rate_limited(retry_after: str, *, method: str = "GET", limits: HttpLimits | None = None) -> VendorError:
    """The error VendorHttp raises for a 429 carrying this Retry-After text."""
    http = VendorHttp(None, connection="c", base_url="http://vendor", limits=limits)  # type: ignore[arg-type]
    answer = Answer(429, {"Retry-After": retry_after}, b'{"error": "slow down"}')
    with pytest.raises(RateLimited) as caught:
        http._raise_for(answer, method, "poll", (200,), None)
    return caught.value


class TestParseRetryAfter:
    @pytest.mark.parametrize("value", HOSTILE)
    def test_a_value_that_is_no_finite_delay_is_ignored(self, value: str) -> None:
        """inf, nan, 1e309, negatives and text read as if the vendor sent no Retry-After."""
        assert parse_retry_after(value) is None

    def test_a_far_future_date_is_cut_to_the_maximum(self) -> None:
        assert parse_retry_after(FAR_FUTURE) == DEFAULT_MAX_RETRY_AFTER_S
        assert parse_retry_after(FAR_FUTURE, maximum=30) == 30

    def test_a_large_number_is_cut_and_honest_values_are_kept(self) -> None:
        now = time.time()
        assert parse_retry_after("99999999") == DEFAULT_MAX_RETRY_AFTER_S
        assert parse_retry_after("120") == 120
        assert parse_retry_after(" 7 ") == 7
        assert parse_retry_after("0") == 0
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: now
        soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 90))
        assert 85 <= (parse_retry_after(soon, now=now) or 0) <= 90

    @given(st.text(max_size=80))
    def test_any_text_gives_none_or_a_delay_within_the_bound(self, value: str) -> None:
        seconds = parse_retry_after(value, maximum=45)
        assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= 45)


class TestTheHttpLayer:
    @pytest.mark.parametrize("value", ["Infinity", "nan", "1e309", "-5"])
    def test_a_429_with_a_hostile_retry_after_says_none(self, value: str) -> None:
        assert rate_limited(value).retry_after is None

    def test_the_connections_own_bound_applies(self) -> None:
        assert rate_limited(FAR_FUTURE, limits=HttpLimits(max_retry_after_s=42)).retry_after == 42
        assert rate_limited("3600", limits=HttpLimits(max_retry_after_s=42)).retry_after == 42
        assert rate_limited("3600").retry_after == DEFAULT_MAX_RETRY_AFTER_S

    def test_limits_come_from_the_settings(self) -> None:
        from worker.config import Settings

        limits = HttpLimits.from_settings(Settings(max_retry_after_s=90, max_answer_bytes=1_048_576))
        assert limits == HttpLimits(max_answer_bytes=1_048_576, max_retry_after_s=90)
        assert HttpLimits.from_settings(Settings()) == HttpLimits()

    @pytest.mark.parametrize(
        "bad", [{"max_answer_bytes": 0}, {"max_retry_after_s": math.inf}, {"max_retry_after_s": -1}]
    )
    def test_limits_refuse_nonsense(self, bad: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            HttpLimits(**bad)  # type: ignore[arg-type]


class TestThePollIsScheduledWithinTheCap:
    """A 429 on a poll, from the answer to the job's next timer: within the cap."""

    def _next_poll_in_s(self, error: VendorError) -> float:
        event = failure_event(CallKind.POLL, error)
        tr = step(active(), event, ctx())
        assert tr.state is not None and tr.state.phase is Phase.ACTIVE
        return (tr.state.next_action_at_ms - NOW) / 1000

    @pytest.mark.parametrize("value", ["Infinity", "nan", "1e309", "-5"])
    def test_a_retry_after_that_is_no_delay_leaves_the_jobs_own_backoff(self, value: str) -> None:
        """Once raised OverflowError (cannot convert float infinity to integer)."""
        waited = self._next_poll_in_s(rate_limited(value))
        assert 0 < waited <= POLICY.retry_max_s * (1 + POLICY.jitter)

    def test_a_far_future_date_waits_the_cap_not_8000_years(self) -> None:
        waited = self._next_poll_in_s(rate_limited(FAR_FUTURE))
        assert waited == DEFAULT_MAX_RETRY_AFTER_S

    def test_a_far_future_date_waits_the_configured_cap(self) -> None:
        waited = self._next_poll_in_s(rate_limited(FAR_FUTURE, limits=HttpLimits(max_retry_after_s=120)))
        assert waited == 120

    def test_the_connection_waits_no_longer_than_the_cap(self) -> None:
        event = failure_event(CallKind.POLL, rate_limited(FAR_FUTURE))
        assert connection_wait_s(event) == DEFAULT_MAX_RETRY_AFTER_S
        assert connection_wait_s(event, 30.0) == 30.0


class TestTheConnectionLane:
    def _event(self, retry_after_s: float) -> CallFailed:
        return CallFailed(
            kind=CallKind.POLL, error=ErrorInfo(RateLimited.code, "429", True), retry_after_s=retry_after_s
        )

    @pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, -5.0])
    def test_a_wait_that_is_no_delay_is_the_default_wait(self, value: float) -> None:
        assert connection_wait_s(self._event(value)) == DEFAULT_RATE_LIMIT_WAIT_S

    def test_a_huge_wait_is_cut_to_the_cap(self) -> None:
        assert connection_wait_s(self._event(1e300), 600.0) == 600.0

    @pytest.mark.parametrize("value", [math.inf, math.nan, -5.0])
    def test_the_limiter_is_never_blocked_forever(self, value: float) -> None:
        limiter = Limiter(max_concurrency=1, rate_per_s=10)
        limiter.block(100.0, value)
        assert limiter.try_acquire(100.0)

    def test_failure_events_carry_only_finite_delays(self) -> None:
        for value in (math.inf, math.nan, -1.0):
            event = failure_event(CallKind.POLL, RateLimited("429", retry_after=value))
            assert event.retry_after_s is None


class TestTheEngineNeverOverflows:
    """Whatever delay reaches the engine, it schedules a finite time at most MAX_DELAY_S away."""

    @pytest.mark.parametrize("delay", [math.inf, -math.inf, math.nan, 1e309, 1e300, -1.0, 0.0])
    def test_at_is_finite_and_bounded(self, delay: float) -> None:
        due = at(NOW, delay)
        assert NOW < due <= NOW + MAX_DELAY_S * 1000
        assert 0 <= duration_ms(delay) <= MAX_DELAY_S * 1000

    @given(ANY_FLOAT)
    def test_retry_delay_is_finite_and_bounded(self, retry_after: float) -> None:
        delay = retry_delay_s(POLICY, 3, 0.5, retry_after)
        assert math.isfinite(delay) and 0 <= delay <= MAX_DELAY_S

    def test_a_policy_built_by_hand_cannot_overflow_either(self) -> None:
        wild = Policy(poll_initial_s=1e300, poll_multiplier=1e300, poll_max_s=math.inf, retention_s=math.inf)
        assert math.isfinite(poll_delay_s(wild, 64, 0.5))
        tr = step(submitting(wild), SubmitAnswered("job-1", "New", Status.QUEUED), ctx(policy=wild))
        assert tr.state is not None and tr.state.next_action_at_ms <= NOW + MAX_DELAY_S * 1000

    @given(
        retry_after=ANY_FLOAT,
        kind=st.sampled_from([CallKind.POLL, CallKind.SUBMIT]),
        busy=st.booleans(),
        outcome_unknown=st.booleans(),
    )
    def test_a_failed_call_with_any_retry_after(
        self, retry_after: float, kind: CallKind, busy: bool, outcome_unknown: bool
    ) -> None:
        state: JobState = active() if kind is CallKind.POLL else submitting()
        event = CallFailed(
            kind=kind,
            error=ErrorInfo("rate_limited", "429", True),
            retry_after_s=retry_after,
            outcome_unknown=outcome_unknown,
            busy=busy,
        )
        tr = step(state, event, ctx())
        assert tr.state is not None
        assert NOW < tr.state.next_action_at_ms <= NOW + MAX_DELAY_S * 1000
