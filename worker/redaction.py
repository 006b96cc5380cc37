"""Scrub secrets out of text and mappings before they reach logs, events or exceptions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

MASK = "***"

SECRET_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "jwt",
        "password",
        "client_secret",
        "secret",
        "api_key",
        "apikey",
        "x-apikey",
        "authorization",
        "sasl_password",
        "sasl.password",
        "sig",
        "signature",
        "cookie",
        "set-cookie",
    }
)

# Keys whose quoted values are masked in text: the same keys ``redact`` masks in mappings.
_QUOTED_KEYS = "|".join(re.escape(key) for key in sorted(SECRET_KEYS, key=len, reverse=True))

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers and bearer tokens in free text.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=]{6,}"), r"\1 " + MASK),
    # key=value in query strings and form bodies (signed URLs carry sig=).
    (
        re.compile(
            r"(?i)\b(access_token|refresh_token|id_token|password|client_secret|api_?key|sig|signature|token)"
            r"=([^&\s\"']+)"
        ),
        r"\1=" + MASK,
    ),
    # "key": "value" in JSON bodies (escaped quotes inside the value included).
    (re.compile(rf'(?i)("(?:{_QUOTED_KEYS})"\s*:\s*)"(?:[^"\\]|\\.)*"'), rf'\1"{MASK}"'),
    # \"key\": \"value\" in JSON carried inside a JSON string (a vendor echoing a request body).
    (re.compile(rf'(?i)(\\"(?:{_QUOTED_KEYS})\\"\s*:\s*)\\"(?:(?!\\").)*\\"'), rf'\1\\"{MASK}\\"'),
    # 'key': 'value' in Python reprs of mappings (exception messages).
    (
        re.compile(rf"""(?i)('(?:{_QUOTED_KEYS})'\s*:\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""),
        rf"\1'{MASK}'",
    ),
    # X-ApiKey: value in dumped headers.
    (re.compile(r"(?i)(x-apikey['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"), r"\1" + MASK),
)


# Every pattern above needs one of these: most texts (ids, names, messages) hold none
# and are returned after one scan instead of six substitutions (a log line's values
# went through those at ~100 us a line).
_MAY_HOLD_SECRET = re.compile(r"(?i)[=:]|bearer|basic")


def redact_text(text: str) -> str:
    # Every pattern needs a ``=``, a ``:`` or whitespace (a scheme needs it before its
    # credential), and an id, a name or a status holds none: four scans in C, about four
    # times quicker than the regular scan on a short text (a status log line holds eight).
    # Whitespace is what ``\s`` matches: the space, or a character ``isprintable``
    # refuses (``tests/unit/test_redaction.py`` checks every code point).
    if "=" not in text and ":" not in text and " " not in text and text.isprintable():
        return text
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    return substitute_patterns(text)


def substitute_patterns(text: str) -> str:
    """Every pattern's substitution, without the scan that skips texts none can match."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@lru_cache(maxsize=4096)  # keys are field and header names: few, and asked about on every log line
def secret_key(key: object) -> bool:
    """Whether a mapping's value under ``key`` is masked whole."""
    return str(key).lower() in SECRET_KEYS


def redact(value: Any) -> Any:
    """Redact strings, and mask values under secret-looking keys, recursively."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (MASK if secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def excerpt(body: bytes | str | None, limit: int = 300) -> str:
    """A short, redacted, printable piece of a vendor's answer for error messages."""
    if body is None:
        return "<no body>"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if not text:
        return "<empty body>"
    text = redact_text(text)
    return text if len(text) <= limit else text[:limit] + "..."
