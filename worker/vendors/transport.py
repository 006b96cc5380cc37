"""HTTP/1.1 to vendor APIs: keep-alive connections per origin, answers parsed by llhttp
(``httptools``), every size an answer controls bounded.

The worker asks little of HTTP: one request at a time per connection, a body it holds
whole (up to ``max_body_bytes``), no cookies, no redirects, no proxies, no compression.
aiohttp's client does all of that and much more, at ~85 µs of CPU per call on the bench
machine; this does the little at ~25 µs, which is most of what a poll costs the worker
(README, Performance). The parsing is llhttp's, Node's parser, as uvicorn uses it.

What a vendor controls and its bound:
- the status line and headers: ``WireLimits.max_head_bytes`` in all, at most
  ``WireLimits.max_headers`` fields; past either the answer is refused, unread;
- the body: ``max_body_bytes`` per call, a declared Content-Length checked before any of
  the body is read, a chunked or unframed one counted as it arrives;
- time: the caller's ``timeout_s`` covers connecting, sending and the whole answer;
- idle connections: kept ``WireLimits.idle_timeout_s`` at most, and never more than
  were busy at once.

A connection that answered out of turn, broke a limit, timed out or said ``Connection:
close`` is closed, never reused.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from worker.limits import MAX_ANSWER_HEAD_BYTES, MAX_ANSWER_HEADERS

# A header name is an RFC 9110 token; a value may hold no line break or NUL.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_IDEMPOTENT = frozenset({"GET", "OPTIONS", "PUT", "DELETE"})

Origin = tuple[str, str, int]  # (scheme, host, port)
Head = tuple[int, CIMultiDictProxy[str]]


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What an answer's framing may cost, and how long an unused connection is kept.

    Args:
        max_head_bytes: the status line and all header lines together (aiohttp's client
            allows 8,190 per line; a vendor's headers are a few hundred bytes).
        max_headers: header fields in one answer.
        idle_timeout_s: an unused connection is closed after this long (below the
            common server keep-alive timeouts, so the client closes first).
    """

    max_head_bytes: int = MAX_ANSWER_HEAD_BYTES
    max_headers: int = MAX_ANSWER_HEADERS
    idle_timeout_s: float = 15.0


class TransportError(Exception):
    """A call that got no usable answer. Messages name what happened, never a header
    value or a body (they may hold credentials)."""


class ConnectFailed(TransportError):
    """No connection could be made: the request was never sent."""


class ConnectionBroken(TransportError):
    """The connection failed or the answer was not HTTP, after the request may have been
    sent (``answered``: whether any byte of an answer had come)."""

    def __init__(self, message: str, *, answered: bool = True) -> None:
        super().__init__(message)
        self.answered = answered


class BodyTooLarge(TransportError):
    """The answer's body is over the caller's bound (``how``: declared or counted)."""

    def __init__(self, status: int, how: str) -> None:
        super().__init__(f"HTTP {status}: {how}")
        self.status = status
        self.how = how


class HeadTooLarge(TransportError):
    pass


class _Unsolicited(TransportError):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request written, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: WireLimits) -> None:
        self._loop = loop
        self._limits = limits
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] | None = None
        self._max_body = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head_bytes = 0
        self._headers_done = False
        self._to_eof = False  # the body ends when the connection does (no length, not chunked)
        self._body: list[bytes] = []
        self._body_size = 0
        self.received = 0  # bytes of the current answer so far
        self.reusable = False
        self.lost = False
        self.idle_since = 0.0

    # ---- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._to_eof:
            self._resolve(keep_alive=False)
        else:
            broken = "the vendor closed the connection before its answer was complete"
            waiter.set_exception(ConnectionBroken(broken, answered=self.received > 0))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, TransportError) else ConnectionBroken("the answer could not be read"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"the answer is not HTTP/1.1 ({str(exc)[:80]})"))
            return
        # httptools holds a header until its end: bound what it may gather meanwhile.
        if not self._headers_done and self.received > self._limits.max_head_bytes:
            self._fail(HeadTooLarge(f"the answer's headers are over {self._limits.max_head_bytes} bytes"))

    def eof_received(self) -> bool:
        self.lost = True  # not to be taken from the pool while the close is under way
        return False  # close: a half-open connection is of no use

    # ---- httptools callbacks (names fixed by httptools) ---------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            raise _Unsolicited("an answer nobody asked for")
        self._headers = CIMultiDict()
        self._head_bytes = 0
        self._headers_done = False
        self._body = []
        self._body_size = 0

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if len(self._headers) >= self._limits.max_headers:
            raise HeadTooLarge(f"the answer has over {self._limits.max_headers} header fields")
        self._headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows
        length = self._headers.get("Content-Length")
        chunked = "chunked" in self._headers.get("Transfer-Encoding", "").lower()
        self._to_eof = length is None and not chunked and status not in (204, 304)
        if length is not None and not chunked and int(length) > self._max_body:  # llhttp checked it is digits
            raise BodyTooLarge(status, f"declares {int(length)} bytes")

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self._max_body:
            raise BodyTooLarge(self._parser.get_status_code(), "stopped reading")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            self._headers_done = False
            return
        self._resolve(keep_alive=self._parser.should_keep_alive())

    # ---- the client's side -----------------------------------------------------------

    def send(self, request: bytes, max_body: int) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        self._waiter = self._loop.create_future()
        self._max_body = max_body
        self._headers_done = False
        self._to_eof = False
        self.received = 0
        self.reusable = False
        assert self.transport is not None
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.lost = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_head_bytes:
            raise HeadTooLarge(f"the answer's headers are over {self._limits.max_head_bytes} bytes")

    def _resolve(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        assert waiter is not None
        self.reusable = keep_alive and not self.lost
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        if not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, body))

    def _fail(self, error: TransportError) -> None:
        self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HttpClient:
    """Calls to vendor APIs over pooled keep-alive HTTP/1.1 (HTTPS verified against the
    system's CAs, or ``ssl_context``). One per process; ``close()`` ends its connections.

    The pool has no cap of its own: each vendor connection's ``max_concurrency`` bounds its
    calls, and idle connections are at most as many as were once busy together."""

    def __init__(
        self, user_agent: str, *, limits: WireLimits | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        if _UNSAFE_VALUE.search(user_agent):
            raise ValueError("the User-Agent may hold no line break")
        self.user_agent = user_agent
        self.limits = limits or WireLimits()
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self.connections_made = 0
        self.closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float,
        max_body_bytes: int,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """(status, headers, body) of one call, within ``timeout_s`` in all.

        Raises ``ConnectFailed`` (never sent), ``TimeoutError``, ``ConnectionBroken``,
        ``BodyTooLarge`` or ``HeadTooLarge``; ``ValueError`` for a request that cannot be
        written (a header with a line break, a URL that is not http(s))."""
        if self.closed:
            raise RuntimeError("the HTTP client is closed")
        target = url if isinstance(url, URL) else URL(url)
        origin, request = self._request_bytes(method, target, headers or {}, body)
        async with asyncio.timeout(timeout_s):
            conn = self._pooled(origin)
            if conn is not None:
                try:
                    return await self._exchange(origin, conn, request, max_body_bytes)
                except ConnectionBroken as exc:
                    # A kept connection the server had closed meanwhile: a request it
                    # never answered at all is safe to send again if it is idempotent.
                    if exc.answered or method not in _IDEMPOTENT:
                        raise
            conn = await self._connect(origin)
            return await self._exchange(origin, conn, request, max_body_bytes)

    async def _exchange(
        self, origin: Origin, conn: _Connection, request: bytes, max_body: int
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        self._busy.add(conn)
        try:
            status, headers, body = await conn.send(request, max_body)
        except BaseException:
            conn.close()  # whatever is left of the answer must not reach the next call
            raise
        finally:
            self._busy.discard(conn)
        if conn.reusable and not self.closed:
            conn.idle_since = asyncio.get_running_loop().time()
            idle = self._idle.setdefault(origin, deque())
            idle.append(conn)
            self._expire(idle, conn.idle_since)
        else:
            conn.close()
        return status, CIMultiDictProxy(headers), body

    def _pooled(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection to ``origin`` that is still open."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        self._expire(idle, asyncio.get_running_loop().time())
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return None

    def _expire(self, idle: deque[_Connection], now: float) -> None:
        """Close the connections unused for longer than the idle timeout (oldest first)."""
        while idle and (idle[0].lost or now - idle[0].idle_since > self.limits.idle_timeout_s):
            idle.popleft().close()

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(loop, self.limits),
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        except OSError as exc:  # refused, unreachable, unknown name, certificate refused
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from None
        self.connections_made += 1
        return conn

    def _request_bytes(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[Origin, bytes]:
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS or not url.raw_host:
            raise ValueError(f"not an http(s) URL with a host: {url.scheme}://…")
        if not _TOKEN.fullmatch(method) or method == "HEAD":
            # HEAD's answer declares a body it does not send: no vendor call uses it.
            raise ValueError(f"{method[:16]!r} is not a method this client sends")
        port = url.port or _DEFAULT_PORTS[scheme]
        lines = [
            f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
            f"User-Agent: {self.user_agent}\r\n"
        ]
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
                # A value is often a credential a vendor handed out: never echoed.
                raise ValueError(f"header {name[:64]!r} cannot be sent (a line break or an invalid name)")
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method in _WITH_BODY:
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8")
        return (scheme, url.raw_host, port), head + body if body else head
