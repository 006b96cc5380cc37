"""Timing and duplicate rules, as data and pure functions (no clock, no randomness:
callers pass ``now`` and a uniform draw ``u`` in [0, 1))."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# The longest delay the engine ever schedules: whatever a vendor or a policy says (an
# infinite or absurd Retry-After, a huge TTL), a job's next action is at most this far
# away, and every delay is a finite number of milliseconds.
MAX_DELAY_S = 366 * 86_400.0


class UnknownOutcome(StrEnum):
    """What to do with a submit whose outcome is lost, when the vendor cannot be asked."""

    RESUBMIT = "resubmit"  # submit again and flag possible_duplicate=true
    FAIL = "fail"  # end the request FAILED (submit_outcome_unknown)


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-connection timing. Defaults suit jobs that take minutes.

    Args:
        first_poll_s: delay between a submit's answer and the first poll.
        poll_initial_s / poll_multiplier / poll_max_s: poll n waits
            ``min(poll_max_s, poll_initial_s * poll_multiplier**n)``.
        jitter: the fraction each delay is spread by (0.2 = +-20%).
        retry_initial_s / retry_max_s: backoff after transient vendor errors.
        max_failing_s: how long a run of transient errors may last before the job
            fails (a vendor down for minutes must not fail its jobs at once).
        busy_retry_s: wait before submitting again after the vendor said "busy".
        submit_settle_s: how long after a submit whose answer was lost the vendor may
            still create its job (a request the client gave up on can still be running
            on the vendor's side); a reconcile that finds nothing is believed only then.
        link_ttl_s: expiry assumed for a link whose expiry the vendor does not say.
        retention_s: how long a finished job's compact record is kept.
        can_reconcile: the vendor can look up a job by our request id.
        can_cancel: the vendor has a cancel call.
        unknown_outcome: see UnknownOutcome.
    """

    first_poll_s: float = 5.0
    poll_initial_s: float = 5.0
    poll_multiplier: float = 1.5
    poll_max_s: float = 60.0
    jitter: float = 0.2
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    max_failing_s: float = 1800.0
    busy_retry_s: float = 30.0
    submit_settle_s: float = 120.0
    link_ttl_s: float = 7 * 86400.0
    retention_s: float = 7 * 86400.0
    can_reconcile: bool = False
    can_cancel: bool = False
    unknown_outcome: UnknownOutcome = UnknownOutcome.RESUBMIT


def bounded_delay_s(delay_s: float) -> float:
    """``delay_s`` within 0..MAX_DELAY_S; nan (no meaningful delay) is 0."""
    if not delay_s > 0:  # also nan
        return 0.0
    return min(delay_s, MAX_DELAY_S)


def duration_ms(delay_s: float) -> int:
    """A delay in whole milliseconds, bounded (never raises, whatever the float)."""
    return round(bounded_delay_s(delay_s) * 1000)


def spread(delay_s: float, jitter: float, u: float) -> float:
    """``delay_s`` moved by up to +-``jitter`` of itself, using the uniform draw ``u``."""
    return max(0.0, delay_s * (1.0 - jitter + 2.0 * jitter * u))


def poll_delay_s(policy: Policy, attempt: int, u: float) -> float:
    try:
        base = policy.poll_initial_s * policy.poll_multiplier ** min(attempt, 64)
    except OverflowError:  # a policy built by hand with an absurd multiplier
        base = math.inf
    return bounded_delay_s(spread(min(policy.poll_max_s, base), policy.jitter, u))


def retry_delay_s(policy: Policy, failures: int, u: float, retry_after_s: float | None) -> float:
    """Backoff after a transient error; never shorter than the vendor's Retry-After."""
    base = policy.retry_initial_s * 2.0 ** min(failures, 32)
    delay = spread(min(policy.retry_max_s, base), policy.jitter, u)
    vendor_says = usable_retry_after(retry_after_s)
    if vendor_says is not None:
        delay = max(delay, vendor_says)
    return bounded_delay_s(delay)


def usable_retry_after(retry_after_s: float | None) -> float | None:
    """A vendor's Retry-After if it is a finite, non-negative delay; else None (ignored)."""
    if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s < 0:
        return None
    return retry_after_s


def at(now_ms: int, delay_s: float) -> int:
    """The time ``delay_s`` after ``now_ms`` (at least 1 ms later, at most MAX_DELAY_S)."""
    return now_ms + max(1, duration_ms(delay_s))
