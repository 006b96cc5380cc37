"""HTTP/1.1 to vendor APIs: keep-alive connections per origin, answers parsed by llhttp
(``httptools``), every size an answer controls bounded.

The worker asks little of HTTP: one request at a time per connection, a body it holds
whole (up to ``max_body_bytes``), no cookies, no redirects, no proxies, no compression
(it asks for ``identity`` and refuses anything else). aiohttp's client does all of that
and much more, and the more costs: in alternating throughput runs the worker spent 7-29 %
less CPU per export with this client (README, Performance). The parsing is llhttp's,
Node's parser, as uvicorn uses it.

What a vendor controls and its bound:
- the status line and headers: ``WireLimits.max_head_bytes`` in all, at most
  ``WireLimits.max_headers`` fields; past either the answer is refused, unread; so are
  chunk framing and trailers (any stretch of that many bytes that adds nothing to the
  body), which httptools would otherwise gather until they end;
- the body: ``max_body_bytes`` per call, a declared Content-Length checked before any of
  the body is read, a chunked or unframed one counted as it arrives, in one buffer;
- time: the caller's ``timeout_s`` covers connecting, sending and the whole answer;
- idle connections: closed 1-1.25 ``WireLimits.idle_timeout_s`` after their last
  use, and never more than were busy at once.

A connection that answered out of turn, broke a bound, timed out, was reset or said
``Connection: close`` is closed, never reused. A kept connection the vendor had closed
meanwhile costs an idempotent call nothing (it goes once more, on a new connection); a
call that must not be sent twice takes a kept connection only if it was in use within
the last second.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from worker.limits import MAX_ANSWER_HEAD_BYTES, MAX_ANSWER_HEADERS

# A header name is an RFC 9110 token; a value may hold no line break or NUL.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
# Headers the client writes itself (framing, the connection's use): a caller's would clash.
_OWN_HEADERS = frozenset(
    {"host", "user-agent", "accept-encoding", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)
# A request that must not be sent twice takes a kept connection only if it was in use
# this recently (a vendor's keep-alive timeout is seconds, commonly 2-5).
FRESH_FOR_UNSAFE_S = 1.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_IDEMPOTENT = frozenset({"GET", "OPTIONS", "PUT", "DELETE"})

Origin = tuple[str, str, int]  # (scheme, host, port)

# A path yarl sends exactly as written: unreserved characters, sub-delimiters, ":" "@"
# and "/", and only the escapes it keeps (it decodes those of the characters just
# named, %41 to A, and normalises lower-case hex). Dot segments it resolves.
_PLAIN_PATH = re.compile(
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]+|%(?:[01][0-9A-F]|2[0235BF]|3[CEF]|5[BCDE]|60|7[BCDF]|[89A-F][0-9A-F]))*"
)
_DOT_SEGMENT = re.compile(r"/\.\.?(?=/|$)")


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What an answer's framing may cost, and how long an unused connection is kept.

    Args:
        max_head_bytes: the status line and all header lines together (aiohttp's client
            allows 8,190 per line; a vendor's headers are a few hundred bytes).
        max_headers: header fields in one answer.
        idle_timeout_s: an unused connection is closed after this long, or up to a
            quarter more (below the 5 s keep-alive of Node, uvicorn and Apache, so the
            client usually closes first; a GET on a connection a vendor closed anyway is
            sent again).
    """

    max_head_bytes: int = MAX_ANSWER_HEAD_BYTES
    max_headers: int = MAX_ANSWER_HEADERS
    idle_timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A base URL split once: what every request to a path under it shares."""

    origin: Origin
    host: str  # the Host header's value
    base_path: str  # already encoded, no trailing slash

    @classmethod
    def of(cls, base: str) -> Endpoint | None:
        """``base`` split, or None when it is not an http(s) URL with a host and nothing
        after its path."""
        try:
            url = URL(base)
            split = _origin_of(url)  # a port out of range raises ValueError
        except ValueError:
            return None  # each call's URL is parsed, and refused, as before
        if split is None or url.raw_query_string or url.raw_fragment:
            return None
        return cls(*split, url.raw_path.rstrip("/"))

    def target(self, path: str) -> Target | None:
        """``base + path`` as yarl would send it, without parsing it again; None for a
        path only yarl can say how to send (escapes it decodes, dot segments)."""
        if path[:1] != "/" or not _PLAIN_PATH.fullmatch(path) or _DOT_SEGMENT.search(path):
            return None
        return Target(self, self.base_path + path)


@dataclass(frozen=True, slots=True)
class Target:
    """A request's origin and its path, ready to be written."""

    endpoint: Endpoint
    path: str


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
    """The answer's status line, headers, chunk framing or trailers are over their bound."""


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
        # One buffer, not a list of pieces: a vendor sending 1-byte chunks would otherwise
        # cost ~80 bytes of bookkeeping per byte of body.
        self._body = bytearray()
        self.received = 0  # bytes of the current answer so far
        # ``received`` when the answer last made progress (sent, headers ended, body
        # bytes): what comes after it and is neither is framing (headers, chunk sizes,
        # trailers), which httptools may hold until it ends, so it is bounded too.
        self._progress_at = 0
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
        if self._headers_done and self._to_eof and exc is None:
            self._resolve(keep_alive=False)  # a reset is not the end of such a body
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
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionBroken("the vendor switched protocols (HTTP 101)"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"the answer is not HTTP/1.1 ({str(exc)[:80]})"))
            return
        if self.received - self._progress_at > self._limits.max_head_bytes and not waiter.done():
            what = "trailers or chunk framing" if self._headers_done else "headers"
            self._fail(HeadTooLarge(f"the answer's {what} are over {self._limits.max_head_bytes} bytes"))

    def eof_received(self) -> bool:
        self.lost = True  # not to be taken from the pool while the close is under way
        return False  # close: a half-open connection is of no use

    # ---- httptools callbacks (names fixed by httptools) ---------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            raise ConnectionBroken("an answer nobody asked for")
        self._headers = CIMultiDict()
        self._head_bytes = 0
        self._headers_done = False
        self._body = bytearray()

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if self._headers_done:
            return  # a chunked body's trailer: not among the answer's headers
        if len(self._headers) >= self._limits.max_headers:
            raise HeadTooLarge(f"the answer has over {self._limits.max_headers} header fields")
        self._headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._progress_at = self.received
        status = self._parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows
        if self._headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # Only identity is asked for: a compressed body would be read as the answer.
            raise ConnectionBroken("the answer is content-encoded, which the client does not ask for")
        length = self._headers.get("Content-Length")
        chunked = "chunked" in self._headers.get("Transfer-Encoding", "").lower()
        has_body = status not in (204, 304)
        self._to_eof = length is None and not chunked and has_body
        if length is not None and has_body and not chunked and int(length) > self._max_body:
            raise BodyTooLarge(status, f"declares {int(length)} bytes")  # llhttp checked it is digits

    def on_body(self, chunk: bytes) -> None:
        self._progress_at = self.received
        if len(self._body) + len(chunk) > self._max_body:
            raise BodyTooLarge(self._parser.get_status_code(), "stopped reading")
        self._body += chunk

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            self._headers_done = False
            self._progress_at = self.received  # the final answer's headers get the whole bound
            return
        self._resolve(keep_alive=self._parser.should_keep_alive())

    # ---- the client's side -----------------------------------------------------------

    def send(self, request: bytes, max_body: int) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        self._waiter = waiter = self._loop.create_future()
        self._max_body = max_body
        self._headers_done = False
        self._to_eof = False
        self.received = self._progress_at = 0
        self.reusable = False
        if self.lost or self.transport is None or self.transport.is_closing():
            waiter.set_exception(ConnectionBroken("the connection was already closed", answered=False))
        else:
            self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.lost = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        """The call's deadline passed before its answer was complete."""
        self._fail(TimeoutError())

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_head_bytes:
            raise HeadTooLarge(f"the answer's headers are over {self._limits.max_head_bytes} bytes")

    def _resolve(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        assert waiter is not None
        # Reusable only if the whole request went out too (a vendor may answer early).
        written = self.transport is not None and not self.transport.get_write_buffer_size()
        self.reusable = keep_alive and written and not self.lost
        body, self._body = bytes(self._body), bytearray()
        if not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, body))

    def _fail(self, error: TransportError | TimeoutError) -> None:
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
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every_s = self.limits.idle_timeout_s / 4
        self.connections_made = 0
        self.closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    def idle_connections(self) -> int:
        return sum(1 for idle in self._idle.values() for conn in idle if not conn.lost)

    async def request(
        self,
        method: str,
        url: str | URL | Target,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float,
        max_body_bytes: int,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """(status, headers, body) of one call, within ``timeout_s`` in all.

        Raises ``ConnectFailed`` (never sent), ``TimeoutError``, ``ConnectionBroken``,
        ``BodyTooLarge`` or ``HeadTooLarge``; ``ValueError`` for a request that cannot be
        written (a header with a line break or of the client's own, a URL that is not
        http(s))."""
        if self.closed:
            raise RuntimeError("the HTTP client is closed")
        method = method.upper()
        target = url if isinstance(url, (URL, Target)) else URL(url)
        origin, request = self._request_bytes(method, target, headers or {}, body)
        idempotent = method in _IDEMPOTENT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # A request that must not be sent twice takes only a connection used just now:
        # one idle for longer may have been closed by the vendor meanwhile.
        conn = self._pooled(loop, origin, None if idempotent else FRESH_FOR_UNSAFE_S)
        if conn is not None:
            try:
                return await self._exchange(loop, origin, conn, request, max_body_bytes, deadline)
            except ConnectionBroken as exc:
                # A kept connection the vendor had closed: a request it never answered
                # at all is sent once more, on a new connection, if that is safe.
                if exc.answered or not idempotent or self.closed:
                    raise
        async with asyncio.timeout_at(deadline):  # a new connection: rare, so the general way
            conn = await self._connect(origin)
        return await self._exchange(loop, origin, conn, request, max_body_bytes, deadline)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        conn: _Connection,
        request: bytes,
        max_body: int,
        deadline: float,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        self._busy.add(conn)
        # One timer that fails the answer's waiter: asyncio.timeout() would cost twice as
        # much on every call (a context manager, the task's cancellation bookkeeping).
        timer = loop.call_at(deadline, conn.time_out)
        try:
            status, headers, body = await conn.send(request, max_body)
        except BaseException:
            conn.close()  # whatever is left of the answer must not reach the next call
            raise
        finally:
            timer.cancel()
            self._busy.discard(conn)
        if conn.reusable and not self.closed:
            self._keep(loop, origin, conn)
        else:
            conn.close()
        return status, CIMultiDictProxy(headers), body

    def _keep(self, loop: asyncio.AbstractEventLoop, origin: Origin, conn: _Connection) -> None:
        conn.idle_since = loop.time()
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every_s, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for longer than the idle timeout (the oldest are at
        the front of each origin's pool); look again while any are kept. One timer for
        the pool, not one per call: a connection closes within 1.25 idle timeouts."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for origin, idle in list(self._idle.items()):
            while idle and (idle[0].lost or now - idle[0].idle_since > self.limits.idle_timeout_s):
                idle.popleft().close()
            if not idle:
                del self._idle[origin]
        if self._idle and not self.closed:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every_s, self._sweep)

    def _pooled(
        self, loop: asyncio.AbstractEventLoop, origin: Origin, fresh_within_s: float | None
    ) -> _Connection | None:
        """The most recently used idle connection to ``origin`` that is still open (and
        was used within ``fresh_within_s``, when given)."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle[-1]
            if conn.lost:
                idle.pop()
                continue
            if fresh_within_s is not None and loop.time() - conn.idle_since > fresh_within_s:
                return None  # kept for the calls that may be sent again
            idle.pop()
            return conn
        if idle is not None:
            del self._idle[origin]
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:  # loading the system's CAs takes a while: not on the loop
                self._ssl = await asyncio.to_thread(ssl.create_default_context)
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
        self, method: str, url: URL | Target, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[Origin, bytes]:
        if isinstance(url, Target):
            origin, host, target = url.endpoint.origin, url.endpoint.host, url.path
        else:
            split = _origin_of(url)
            if split is None:
                raise ValueError(f"not an http(s) URL with a host: {url.scheme}://…")
            (origin, host), target = split, url.raw_path_qs
        if not _TOKEN.fullmatch(method) or method == "HEAD":
            # HEAD's answer declares a body it does not send: no vendor call uses it.
            raise ValueError(f"{method[:16]!r} is not a method this client sends")
        if _UNSAFE_TARGET.search(target):  # yarl encodes these, unless told a URL is encoded
            raise ValueError("the URL's path or query holds a space or a control character")
        lines = [
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: {self.user_agent}\r\nAccept-Encoding: identity\r\n"
        ]
        for name, value in headers.items():
            if not _sendable_name(name) or _UNSAFE_VALUE.search(value):
                # A value is often a credential a vendor handed out: never echoed.
                raise ValueError(
                    f"header {name[:64]!r} cannot be sent (a line break, an invalid name or the client's own)"
                )
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method in _WITH_BODY:
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8")
        return origin, head + body if body else head


def _origin_of(url: URL) -> tuple[Origin, str] | None:
    """(origin, Host header value) of an http(s) URL with a host; None for any other."""
    if url.scheme not in _DEFAULT_PORTS or not url.raw_host:
        return None
    return (url.scheme, url.raw_host, url.port or _DEFAULT_PORTS[url.scheme]), url.host_port_subcomponent or ""


@lru_cache(maxsize=256)  # header names are the adapters' own, a handful per vendor
def _sendable_name(name: str) -> bool:
    """A token, and not one of the headers the client writes itself."""
    return _TOKEN.fullmatch(name) is not None and name.lower() not in _OWN_HEADERS
