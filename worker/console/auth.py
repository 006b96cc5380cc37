"""Who may act in the console: read-only unless ``EXPORT_WORKER_CONSOLE_TOKEN`` is set.

With a token, an operator signs in with their name and the token; the console answers
with a session cookie (HttpOnly, SameSite=Strict) signed with a key derived from the
token, so changing the token signs everyone out. Every form that acts carries a CSRF
token derived from the session, and a POST whose Origin is another site is refused.
The token itself is never stored, logged or sent back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

COOKIE = "export_worker_console"
# How long a sign-in lasts.
SESSION_S = 8 * 3600
# The longest operator name kept (it goes into the control topic and the log).
MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class Session:
    who: str
    expires_at: int  # epoch seconds
    nonce: str

    @property
    def raw(self) -> bytes:
        return json.dumps({"who": self.who, "exp": self.expires_at, "n": self.nonce}, separators=(",", ":")).encode()


def clean_name(name: str) -> str:
    """An operator name as the console keeps it: printable, single-line, bounded."""
    return "".join(ch for ch in name if ch.isprintable()).strip()[:MAX_NAME]


class ConsoleAuth:
    """Signs and checks sessions and CSRF tokens; ``enabled`` False means read-only."""

    def __init__(self, token: SecretStr | None, *, clock: Callable[[], float] = time.time) -> None:
        self._token = token.get_secret_value() if token is not None and token.get_secret_value() else None
        secret = self._token or ""
        self._key = hmac.new(secret.encode(), b"export-worker console session", hashlib.sha256).digest()
        self._now = clock

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check_token(self, offered: str) -> bool:
        return self._token is not None and hmac.compare_digest(offered.encode(), self._token.encode())

    def sign_in(self, who: str, nonce: str) -> str:
        """The cookie value for a new session."""
        session = Session(clean_name(who), int(self._now()) + SESSION_S, nonce)
        payload = base64.urlsafe_b64encode(session.raw).decode().rstrip("=")
        return f"{payload}.{self._sign(session.raw)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie proves; None when absent, forged, expired or read-only."""
        if not self.enabled or not cookie or "." not in cookie or len(cookie) > 1024:
            return None
        payload, signature = cookie.rsplit(".", 1)
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(raw).encode()):  # bytes: any text is safe
            return None
        try:
            data = json.loads(raw)
            session = Session(str(data["who"]), int(data["exp"]), str(data["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > self._now() and session.who else None

    def contains_token(self, text: str) -> bool:
        """True when ``text`` holds the token (pasted into the wrong field): such a text
        is never kept, shown or logged."""
        return self._token is not None and self._token in text

    def plan(self, session: Session, positions: list[tuple[int, int]]) -> str:
        """Binds a replay's confirmation to the dead letters its dry run showed."""
        selected = ",".join(f"{p}:{o}" for p, o in sorted(positions))
        return self._sign(b"plan:" + session.raw + b"|" + selected.encode())

    def check_plan(self, session: Session, positions: list[tuple[int, int]], offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self.plan(session, positions).encode())

    def csrf(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.raw)

    def check_csrf(self, session: Session, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self.csrf(session).encode())

    def _sign(self, raw: bytes) -> str:
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser's POST comes from our own pages: its Origin (when sent) is our host
    (either scheme: a TLS-terminating proxy may stand in front)."""
    if origin is None:
        return True  # browsers send Origin with every cross-site POST
    return host is not None and origin in (f"http://{host}", f"https://{host}")
