"""The one HTTP mechanism every adapter uses: a shared HTTP client, auth with
token refresh (refresh before expiry; on a 401 refresh once and retry), and the
translation of transport errors and status codes into ``worker.errors``.

Vendor answers are hostile: a body is read up to ``HttpLimits.max_answer_bytes`` and no
further, a ``Retry-After`` that is not a finite, non-negative delay is ignored and a
longer one is cut to ``HttpLimits.max_retry_after_s``, and an answer whose declared
media type is not JSON is not read as JSON.

Vendor specifics (paths, bodies, status names) stay in the adapter modules.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from opentelemetry import trace
from pydantic import SecretStr
from yarl import URL

from worker.errors import (
    AnswerTooLarge,
    AuthFailed,
    MalformedAnswer,
    RateLimited,
    VendorError,
    VendorRejected,
    VendorUnavailable,
)
from worker.limits import (
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_RETRY_AFTER_S,
    MAX_ANSWER_BYTES_CEILING,
    MAX_RETRY_AFTER_CEILING_S,
)
from worker.redaction import excerpt
from worker.tracing import Tracing, path_template
from worker.vendors.transport import BodyTooLarge, ConnectFailed, Endpoint, HttpClient, Target, TransportError

if TYPE_CHECKING:
    from worker.config import Settings

Observer = Callable[[str, str, float, str], None]  # (connection, operation, seconds, outcome)
Describe = Callable[["Answer"], str]  # a vendor's own words for a refused answer (redacted)

# Media types an answer may declare and still be read as JSON (besides any ``...json``):
# none at all, and text/plain, which some gateways put on JSON. Anything else (an HTML
# error page, a file) is not the API's answer.
JSON_LENIENT_TYPES = frozenset({"", "text/plain"})
# Longest token lifetime believed; a longer (or non-finite) one is cut to this.
MAX_TOKEN_LIFETIME_S = 30 * 86_400.0
DEFAULT_TOKEN_LIFETIME_S = 3600.0


def vendor_session(user_agent: str) -> HttpClient:
    """The one HTTP client every connection's calls go through (``worker.vendors.transport``).

    It keeps no cookies (no vendor API in scope uses them), follows no redirects and puts
    no cap of its own on open connections: each vendor connection's ``max_concurrency``
    bounds its calls, and a client-wide cap below their sum would queue calls with their
    timeouts already running."""
    return HttpClient(user_agent)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one vendor answer may cost the worker.

    Args:
        max_answer_bytes: the largest answer body read (the client asks for no
            compression and refuses it); a larger one is refused with ``AnswerTooLarge``
            without reading the rest.
        max_retry_after_s: the longest ``Retry-After`` honoured; a longer one is cut to
            this (beyond it, the job's own failure budget decides).
    """

    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_answer_bytes <= MAX_ANSWER_BYTES_CEILING:
            raise ValueError(f"max_answer_bytes must be 1..{MAX_ANSWER_BYTES_CEILING}")
        if not (math.isfinite(self.max_retry_after_s) and 0 <= self.max_retry_after_s <= MAX_RETRY_AFTER_CEILING_S):
            raise ValueError(f"max_retry_after_s must be 0..{MAX_RETRY_AFTER_CEILING_S:g}")

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(max_answer_bytes=settings.max_answer_bytes, max_retry_after_s=settings.max_retry_after_s)


def media_type(headers: Mapping[str, str]) -> str:
    """The declared media type, lower case, without parameters ("" when none)."""
    value = headers.get("Content-Type")
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; anything else is a MalformedAnswer with a redacted excerpt.

        An answer that declares a media type other than JSON (or text/plain) is refused
        even if its body happens to parse: an HTML page or a file is not the API talking.
        """
        if not self.body.strip():
            raise MalformedAnswer(f"empty body (HTTP {self.status})", status=self.status)
        kind = media_type(self.headers)
        if kind not in JSON_LENIENT_TYPES and not kind.endswith(("/json", "+json")):
            raise MalformedAnswer(
                f"answer is {excerpt(kind, 80)}, not JSON (HTTP {self.status}): {excerpt(self.body)}",
                status=self.status,
            )
        try:
            return json.loads(self.body)
        except ValueError:
            raise MalformedAnswer(
                f"answer is not JSON (HTTP {self.status}): {excerpt(self.body)}", status=self.status
            ) from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise MalformedAnswer(f"expected a JSON object, got {type(data).__name__}: {excerpt(self.body)}")
        return data


def parse_retry_after(
    value: str | None, *, now: float | None = None, maximum: float = DEFAULT_MAX_RETRY_AFTER_S
) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), at most ``maximum``.

    A value that is not a finite, non-negative delay (``inf``, ``nan``, ``1e309``, ``-5``,
    text) is ignored: ``None``, as if the vendor had not sent one. A date in the past is
    0; one far in the future (``Fri, 31 Dec 9999 23:59:59 GMT``) is ``maximum``.
    """
    if not value:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = max(0.0, when.timestamp() - (now if now is not None else time.time()))
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, maximum)


class Auth(Protocol):
    """Adds credentials to a request; ``refresh`` after the vendor said 401."""

    async def headers(self, http: VendorHttp) -> dict[str, str]: ...

    async def refresh(self, http: VendorHttp) -> None: ...


class NoAuth:
    async def headers(self, http: VendorHttp) -> dict[str, str]:
        return {}

    async def refresh(self, http: VendorHttp) -> None:
        return None


class StaticHeader:
    """A fixed credential header, e.g. OpenGate's ``X-ApiKey``."""

    def __init__(self, name: str, secret: SecretStr) -> None:
        self._name = name
        self._secret = secret

    async def headers(self, http: VendorHttp) -> dict[str, str]:
        return {self._name: self._secret.get_secret_value()}

    async def refresh(self, http: VendorHttp) -> None:
        raise AuthFailed(f"{self._name} was refused", status=401)


TokenFetch = Callable[["VendorHttp", "str | None"], Awaitable[tuple[str, float, "str | None"]]]


class BearerToken:
    """A token fetched from an endpoint and renewed ``margin_s`` before it expires.

    Args:
        fetch: ``(http, refresh_token) -> (access_token, expires_in_s, refresh_token)``;
            vendors differ only in how they ask (form POST, query GET, JSON login).
        scheme: ``Bearer``, or ``bearer`` where the vendor documents it so.
    """

    def __init__(self, fetch: TokenFetch, *, scheme: str = "Bearer", margin_s: float = 60.0) -> None:
        self._fetch = fetch
        self._scheme = scheme
        self._margin_s = margin_s
        self._token: str | None = None
        self._refresh_token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def headers(self, http: VendorHttp) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._renew_at:
            await self._renew(http, stale=self._token)
        assert self._token is not None
        return {"Authorization": f"{self._scheme} {self._token}"}

    async def refresh(self, http: VendorHttp) -> None:
        await self._renew(http, stale=self._token, force=True)

    async def _renew(self, http: VendorHttp, *, stale: str | None, force: bool = False) -> None:
        async with self._lock:
            # Another call may have renewed it while this one waited for the lock.
            if self._token != stale:
                return
            if not force and self._token is not None and time.monotonic() < self._renew_at:
                return
            token, expires_in, refresh = await self._fetch(http, self._refresh_token)
            expires_in = token_lifetime_s(expires_in)  # whatever the fetcher read: finite
            self.fetches += 1
            self._token = token
            self._refresh_token = refresh or self._refresh_token
            # Renew ahead of expiry, but never earlier than 3/4 of a short lifetime.
            self._renew_at = time.monotonic() + expires_in - min(self._margin_s, expires_in / 4)


def token_answer(answer: Answer) -> tuple[str, float, str | None]:
    """Read an OAuth2-style token answer (access_token, expires_in, refresh_token)."""
    data = answer.json_object()
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise MalformedAnswer(f"token answer without access_token: {excerpt(answer.body)}")
    refresh = data.get("refresh_token")
    return token, token_lifetime_s(data.get("expires_in")), refresh if isinstance(refresh, str) else None


def token_lifetime_s(value: Any, default_s: float = DEFAULT_TOKEN_LIFETIME_S) -> float:
    """A token's ``expires_in`` as seconds: ``default_s`` unless a finite number; at most
    30 days, at least 0 (an expired token is renewed before its next use)."""
    if isinstance(value, bool):
        return default_s
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return default_s
    if not math.isfinite(seconds):
        return default_s
    return min(max(seconds, 0.0), MAX_TOKEN_LIFETIME_S)


class VendorHttp:
    """HTTP for one connection: base URL, auth, timeouts, answer limits and error mapping.

    Args:
        client: the shared HTTP client (one per process, ``vendor_session``).
        base_url: the vendor's base URL, without a trailing slash.
        auth: how to authenticate.
        timeout_s: total time allowed per call (connecting, sending, reading the answer).
        observe: called with (connection, operation, seconds, outcome) after each call.
        limits: answer size and Retry-After bounds (defaults when omitted).
        tracing: each HTTP request of a traced vendor call is an event of its span (when on).
    """

    def __init__(
        self,
        client: HttpClient,
        *,
        connection: str,
        base_url: str,
        auth: Auth | None = None,
        timeout_s: float = 30.0,
        observe: Observer | None = None,
        limits: HttpLimits | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.client = client
        self.connection = connection
        self._tracing = tracing or Tracing()
        self._base_url = base_url.rstrip("/")
        self._endpoint = Endpoint.of(self._base_url)
        self.auth: Auth = auth or NoAuth()
        self.timeout_s = timeout_s
        self.limits = limits or HttpLimits()
        self._observe = observe

    @property
    def base_url(self) -> str:
        """Read-only: plain paths are written from its split (``Endpoint``), made once."""
        return self._base_url

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self._base_url}{path}"

    def retry_after(self, answer: Answer) -> float | None:
        """The answer's Retry-After in seconds, within this connection's bound."""
        return parse_retry_after(answer.headers.get("Retry-After"), maximum=self.limits.max_retry_after_s)

    async def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        describe: Describe | None = None,
        step: str | None = None,
    ) -> Answer:
        """One authenticated call; a 401 refreshes the credentials and retries once.

        Any status outside ``ok`` raises: 429 -> RateLimited, 5xx/408 -> VendorUnavailable,
        other 4xx -> VendorRejected (with ``.answer`` for adapters that look closer).
        ``describe`` turns the refused answer into the vendor's own words for the message.

        ``operation`` names the call in metrics: one of a fixed set per adapter (never a
        page number or a count). ``step`` (e.g. ``3/7``) only adds to error messages.

        A call that fails for want of credentials (the token endpoint is down, slow or
        talks nonsense) was never sent: its error says ``outcome_unknown=False``.
        """
        started = time.monotonic()
        outcome = "ok"
        name = f"{operation} {step}" if step else operation
        try:
            sending = self._send(method, path, json_body, data, params, headers, authenticated, name)
            answer = await self._traced(method, path, sending)
            if answer.status == 401 and authenticated:
                # Refused: the vendor did not act on it. Nor on a call never resent.
                await self._credentials(name, refresh=True)
                sending = self._send(method, path, json_body, data, params, headers, authenticated, name)
                answer = await self._traced(method, path, sending)
                if answer.status == 401:
                    raise AuthFailed(f"{name}: credentials refused after a token refresh", status=401)
            self._raise_for(answer, method, name, ok, describe)
            return answer
        except VendorError as exc:
            outcome = exc.code
            raise
        finally:
            if self._observe is not None:
                self._observe(self.connection, operation, time.monotonic() - started, outcome)

    async def _credentials(self, name: str, *, refresh: bool = False) -> dict[str, str]:
        """The auth headers (after a refresh when asked); a failure to get them is an
        error of this call that says it was not sent, whatever the token call said."""
        try:
            if refresh:
                await self.auth.refresh(self)
                return {}
            return await self.auth.headers(self)
        except VendorError as exc:
            why = "refused (401), and new credentials could not be had" if refresh else "not sent, no credentials"
            raise not_sent(exc, f"{name}: {why}") from None

    async def _traced(self, method: str, path: str, sending: Awaitable[Answer]) -> Answer:
        """``sending``, recorded as an event of the current vendor call's span (tracing
        on), named by its path template: a span never holds a URL, a query or a signature."""
        span = trace.get_current_span() if self._tracing.enabled else None
        if span is None or not span.is_recording():
            return await sending
        request = {"http.request.method": method.upper(), "url.template": path_template(path)}
        try:
            answer = await sending
        except VendorError as exc:
            span.add_event("http.request", {**request, "error.type": exc.code})
            raise
        outcome: dict[str, Any] = {**request, "http.response.status_code": answer.status}
        retry_after = self.retry_after(answer)
        if retry_after is not None:
            outcome["export.retry_after_s"] = retry_after
        span.add_event("http.request", outcome)
        span.set_attributes(outcome)  # the call's last request
        return answer

    async def _send(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        authenticated: bool,
        name: str = "call",
    ) -> Answer:
        all_headers: dict[str, str] = {"Accept": "application/json"}
        if authenticated:
            all_headers.update(await self._credentials(name))
        payload: bytes | None = None
        if json_body is not None:
            payload = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif data is not None:
            payload = urlencode(data).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        if headers:
            all_headers.update(headers)
        # Most calls go to a plain path under the base URL: split once, not per call.
        target = None if params or self._endpoint is None else self._endpoint.target(path)
        url: URL | Target
        if target is not None:
            url = target
        else:
            url = URL(self.url(path))
            if params:
                url = url.extend_query(params)
        # A request that never reached the vendor cannot have created anything.
        reached = method.upper() not in ("GET", "HEAD")
        try:
            status, answer_headers, body = await self.client.request(
                method,
                url,
                headers=all_headers,
                body=payload,
                timeout_s=self.timeout_s,
                max_body_bytes=self.limits.max_answer_bytes,
            )
        except ConnectFailed as exc:
            raise VendorUnavailable(f"{name}: cannot connect: {exc}", outcome_unknown=False) from None
        except TimeoutError:
            raise VendorUnavailable(f"{name}: timed out waiting for the answer", outcome_unknown=reached) from None
        except BodyTooLarge as exc:
            raise self._too_large(exc.status, name, reached, exc.how) from None
        except TransportError as exc:
            raise VendorUnavailable(f"{name}: connection failed: {exc}", outcome_unknown=reached) from None
        return Answer(status, answer_headers, body)  # case-insensitive names

    def _too_large(self, status: int, name: str, reached: bool, how: str) -> AnswerTooLarge:
        return AnswerTooLarge(
            f"{name}: answer larger than {self.limits.max_answer_bytes} bytes (HTTP {status}; {how})",
            status=status,
            # A refusal (4xx) did nothing; any other answer to a write may have acted.
            outcome_unknown=reached and not 400 <= status < 500,
        )

    def _raise_for(
        self, answer: Answer, method: str, operation: str, ok: tuple[int, ...], describe: Describe | None
    ) -> None:
        status = answer.status
        if status in ok:
            return
        detail = _described(answer, describe)
        if status == 429:
            raise RateLimited(
                f"{operation}: rate limited (HTTP 429): {detail}",
                retry_after=self.retry_after(answer),
                status=429,
                outcome_unknown=False,
            )
        if status >= 500 or status in (408, 425):
            raise VendorUnavailable(
                f"{operation}: HTTP {status}: {detail}",
                retry_after=self.retry_after(answer),
                status=status,
                outcome_unknown=method.upper() not in ("GET", "HEAD"),
            )
        rejected = VendorRejected(f"{operation}: HTTP {status}: {detail}", status=status)
        rejected.answer = answer
        raise rejected


def not_sent(exc: VendorError, context: str) -> VendorError:
    """``exc`` (same class, so just as retriable) for a call that never left: its
    vendor cannot have acted on it."""
    copy = type(exc)(
        f"{context}: {exc.message}",
        retry_after=exc.retry_after,
        status=exc.status,
        outcome_unknown=False,
    )
    if isinstance(exc, VendorRejected):
        copy.answer = exc.answer  # type: ignore[attr-defined]
    return copy


def _described(answer: Answer, describe: Describe | None) -> str:
    if describe is not None:
        try:
            text = describe(answer)
        except Exception:  # describing must never hide the real error
            text = ""
        if text:
            return excerpt(text)
    return excerpt(answer.body)
