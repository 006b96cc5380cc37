"""The one HTTP mechanism every adapter uses: a shared aiohttp session, auth with
token refresh (refresh before expiry; on a 401 refresh once and retry), and the
translation of transport errors and status codes into ``worker.errors``.

Vendor specifics (paths, bodies, status names) stay in the adapter modules.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr

from worker.errors import (
    AuthFailed,
    MalformedAnswer,
    RateLimited,
    VendorError,
    VendorRejected,
    VendorUnavailable,
)
from worker.redaction import excerpt

Observer = Callable[[str, str, float, str], None]  # (connection, operation, seconds, outcome)
Describe = Callable[["Answer"], str]  # a vendor's own words for a refused answer (redacted)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; anything else is a MalformedAnswer with a redacted excerpt."""
        if not self.body.strip():
            raise MalformedAnswer(f"empty body (HTTP {self.status})", status=self.status)
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


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


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
    try:
        expires_in = float(data.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    refresh = data.get("refresh_token")
    return token, expires_in, refresh if isinstance(refresh, str) else None


class VendorHttp:
    """HTTP for one connection: base URL, auth, timeouts and error mapping.

    Args:
        session: shared aiohttp session (one per process).
        base_url: the vendor's base URL, without a trailing slash.
        auth: how to authenticate.
        timeout_s: total time allowed per call.
        observe: called with (connection, operation, seconds, outcome) after each call.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connection: str,
        base_url: str,
        auth: Auth | None = None,
        timeout_s: float = 30.0,
        observe: Observer | None = None,
    ) -> None:
        self.session = session
        self.connection = connection
        self.base_url = base_url.rstrip("/")
        self.auth: Auth = auth or NoAuth()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._observe = observe

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

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
    ) -> Answer:
        """One authenticated call; a 401 refreshes the credentials and retries once.

        Any status outside ``ok`` raises: 429 -> RateLimited, 5xx/408 -> VendorUnavailable,
        other 4xx -> VendorRejected (with ``.answer`` for adapters that look closer).
        ``describe`` turns the refused answer into the vendor's own words for the message.
        """
        started = time.monotonic()
        outcome = "ok"
        try:
            answer = await self._send(method, path, json_body, data, params, headers, authenticated)
            if answer.status == 401 and authenticated:
                await self.auth.refresh(self)
                answer = await self._send(method, path, json_body, data, params, headers, authenticated)
                if answer.status == 401:
                    raise AuthFailed(f"{operation}: credentials refused after a token refresh", status=401)
            self._raise_for(answer, method, operation, ok, describe)
            return answer
        except VendorError as exc:
            outcome = exc.code
            raise
        finally:
            if self._observe is not None:
                self._observe(self.connection, operation, time.monotonic() - started, outcome)

    async def _send(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        authenticated: bool,
    ) -> Answer:
        all_headers: dict[str, str] = {"Accept": "application/json"}
        if authenticated:
            all_headers.update(await self.auth.headers(self))
        if headers:
            all_headers.update(headers)
        # A request that never reached the vendor cannot have created anything.
        reached = method.upper() not in ("GET", "HEAD")
        try:
            async with self.session.request(
                method,
                self.url(path),
                json=json_body,
                data=data,
                params=params,
                headers=all_headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return Answer(response.status, response.headers, body)  # case-insensitive names
        except aiohttp.ClientConnectorError as exc:
            raise VendorUnavailable(f"cannot connect: {exc.os_error.strerror or exc}", outcome_unknown=False) from None
        except TimeoutError:
            raise VendorUnavailable("timed out waiting for the answer", outcome_unknown=reached) from None
        except aiohttp.ClientError as exc:
            raise VendorUnavailable(f"connection failed: {type(exc).__name__}", outcome_unknown=reached) from None

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
                retry_after=parse_retry_after(answer.headers.get("Retry-After")),
                status=429,
                outcome_unknown=False,
            )
        if status >= 500 or status in (408, 425):
            raise VendorUnavailable(
                f"{operation}: HTTP {status}: {detail}",
                retry_after=parse_retry_after(answer.headers.get("Retry-After")),
                status=status,
                outcome_unknown=method.upper() not in ("GET", "HEAD"),
            )
        rejected = VendorRejected(f"{operation}: HTTP {status}: {detail}", status=status)
        rejected.answer = answer
        raise rejected


def _described(answer: Answer, describe: Describe | None) -> str:
    if describe is not None:
        try:
            text = describe(answer)
        except Exception:  # describing must never hide the real error
            text = ""
        if text:
            return excerpt(text)
    return excerpt(answer.body)
