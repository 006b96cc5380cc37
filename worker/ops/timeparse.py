"""Command-line TIME and P:O arguments.

TIME is ISO 8601 (``2026-03-01``, ``2026-03-01T12:00``, ``2026-03-01T12:00:00+02:00``;
without a zone it is UTC), a time relative to now (``-24h``, ``-30m``, ``-7d``,
``-90s``, ``-1w``), ``now``, or epoch milliseconds prefixed with ``@`` (``@1767225600000``).
"""

from __future__ import annotations

import datetime as dt
import re

from worker.ops.errors import UsageError

_RELATIVE = re.compile(r"^-([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*([smhdw])$")
_EPOCH_MS = re.compile(r"^@[0-9]{1,15}$")
_POSITION = re.compile(r"^([0-9]{1,9}):([0-9]{1,18})$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now_ms: int, flag: str = "TIME") -> int:
    """``text`` as epoch milliseconds; raises UsageError with the accepted forms."""
    value = text.strip()
    if value.lower() == "now":
        return now_ms
    if _EPOCH_MS.match(value):
        return int(value[1:])
    match = _RELATIVE.match(value.lower())
    if match:
        return now_ms - round(float(match[1]) * _UNITS[match[2]] * 1000)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return int((parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)).timestamp() * 1000)
    except (ValueError, OverflowError):
        raise UsageError(
            f"{flag} {text!r} is not a time: use ISO 8601 (2026-03-01T12:00Z), relative (-24h, -30m, -7d) or @epoch_ms"
        ) from None


def parse_position(text: str, *, flag: str = "P:O") -> tuple[int, int]:
    """``"2:1500"`` -> (partition 2, offset 1500)."""
    found = _POSITION.match(text.strip())
    if found is None:
        raise UsageError(f"{flag} {text!r} is not PARTITION:OFFSET (e.g. 0:1500)")
    return int(found[1]), int(found[2])


def format_ms(ms: int | None) -> str:
    """Epoch milliseconds as ISO 8601 UTC to the second, '' for None."""
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
