"""The HTTP client every vendor call goes through (``worker.vendors.transport``), against
real local servers: aiohttp's for well-behaved answers, raw sockets for answers no proper
server would send. Keep-alive, what is never kept (cookies, broken or timed-out
connections), every bound an answer meets, HTTPS, and no cap of the client's own."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from yarl import URL

from worker.errors import AnswerTooLarge, VendorUnavailable
from worker.testing import eventually, local_app
from worker.vendors import HttpClient, VendorHttp, transport, vendor_session
from worker.vendors.http import HttpLimits
from worker.vendors.transport import (
    BodyTooLarge,
    ConnectFailed,
    ConnectionBroken,
    HeadTooLarge,
    WireLimits,
)

LIMIT = 64 * 1024  # the body bound of these tests' calls
# A test of the client's own timeout gives up this long after it (TimeoutError too, but
# long after the time the test asserts).
GUARD_S = 10.0
CONCURRENT = 150  # above aiohttp's default cap of 100 connections per session


async def call(client: HttpClient, url: str, method: str = "GET", **options: Any) -> tuple[int, Any, bytes]:
    options.setdefault("timeout_s", 5.0)
    options.setdefault("max_body_bytes", LIMIT)
    return await client.request(method, url, **options)


# ---- a well-behaved server -------------------------------------------------------------


class Peers:
    """The client ports an aiohttp server saw (one per connection) and what it was sent."""

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.requests: list[dict[str, Any]] = []
        self.waiting = 0
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()


@pytest.fixture
async def good() -> AsyncIterator[tuple[str, Peers]]:
    peers = Peers()
    counter = itertools.count()

    async def record(request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            peers.ports.add(peer[1])
        peers.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"n": len(peers.requests)})

    async def cookie(request: web.Request) -> web.Response:
        await record(request)
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie(f"session-{next(counter)}", "x" * 100)
        return response

    async def close(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({}, headers={"Connection": "close"})

    async def held(request: web.Request) -> web.Response:
        peers.waiting += 1
        if peers.waiting >= CONCURRENT:
            peers.all_in.set()
        await peers.release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/cookie", cookie)
    app.router.add_get("/close", close)
    app.router.add_get("/held", held)
    async with local_app(app) as port:
        try:
            yield f"http://127.0.0.1:{port}", peers
        finally:
            peers.release.set()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with vendor_session("export-worker/test") as http:
        yield http


class TestKeepAlive:
    async def test_calls_in_turn_share_one_connection(self, client: HttpClient, good: tuple[str, Peers]) -> None:
        url, peers = good
        for n in range(1, 21):
            status, headers, body = await call(client, f"{url}/echo")
            assert status == 200 and json.loads(body) == {"n": n}
            assert headers["content-type"].startswith("application/json")  # names are case-insensitive
        assert len(peers.ports) == 1 and client.connections_made == 1 and client.idle_connections() == 1

    async def test_connection_close_is_honoured(self, client: HttpClient, good: tuple[str, Peers]) -> None:
        url, peers = good
        for _ in range(3):
            await call(client, f"{url}/close")
        assert len(peers.ports) == 3 and client.idle_connections() == 0

    async def test_an_unused_connection_expires(self, good: tuple[str, Peers]) -> None:
        url, peers = good
        async with HttpClient("t", limits=WireLimits(idle_timeout_s=0.05)) as client:
            await call(client, f"{url}/echo")
            idle_since = time.monotonic()
            await asyncio.sleep(0.1)  # the time under test: longer than the idle timeout
            assert time.monotonic() - idle_since > 0.05
            await call(client, f"{url}/echo")
        assert len(peers.ports) == 2

    async def test_an_unused_connection_is_closed_without_another_call(self, raw: RawServer) -> None:
        url, server = await raw(answer_each)
        async with HttpClient("t", limits=WireLimits(idle_timeout_s=0.1)) as client:
            await call(client, url)
            await eventually(lambda: server.ended == 1, timeout=5, what="the idle connection closed")
            assert client.idle_connections() == 0

    async def test_a_call_that_must_not_go_twice_takes_only_a_connection_used_just_now(
        self, raw: RawServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(transport, "FRESH_FOR_UNSAFE_S", 0.05)
        url, server = await raw(answer_each)
        async with HttpClient("t") as client:
            await call(client, url, "POST", body=b"{}")
            await call(client, url, "POST", body=b"{}")  # at once: the same connection
            assert server.connections == 1
            await asyncio.sleep(0.1)  # the time under test: longer than FRESH_FOR_UNSAFE_S
            await call(client, url, "POST", body=b"{}")
            assert server.connections == 2
            await call(client, url)  # a GET takes the older one still kept
            assert server.connections == 2

    async def test_cookies_a_vendor_sets_are_never_sent_back(self, client: HttpClient, good: tuple[str, Peers]) -> None:
        url, _ = good
        # By name, not by address: a cookie jar would keep no cookies of an IP address.
        answers = [
            json.loads((await call(client, f"{url.replace('127.0.0.1', 'localhost')}/cookie"))[2]) for _ in range(5)
        ]
        assert [a["cookie"] for a in answers] == [None] * 5

    async def test_no_cap_of_its_own_on_concurrent_calls(self, client: HttpClient, good: tuple[str, Peers]) -> None:
        url, peers = good
        calls = [asyncio.create_task(call(client, f"{url}/held", timeout_s=30.0)) for _ in range(CONCURRENT)]
        try:
            # With aiohttp's default cap, 50 of them would wait for a connection and never arrive.
            await asyncio.wait_for(peers.all_in.wait(), timeout=20)
        finally:
            peers.release.set()
            answers = await asyncio.gather(*calls)
        assert {a[0] for a in answers} == {200} and client.idle_connections() == CONCURRENT

    async def test_closing_the_client_closes_its_connections(self, good: tuple[str, Peers]) -> None:
        url, _ = good
        client = HttpClient("t")
        await call(client, f"{url}/echo")
        assert client.idle_connections() == 1
        await client.close()
        assert client.idle_connections() == 0
        with pytest.raises(RuntimeError):
            await call(client, f"{url}/echo")


class TestWhatIsSent:
    async def test_bodies_headers_and_query_as_the_adapters_give_them(self, good: tuple[str, Peers]) -> None:
        url, peers = good
        async with vendor_session("export-worker/1.0 (w-1)") as client:
            http = VendorHttp(client, connection="c", base_url=url)
            await http.call("POST", "/echo", operation="submit", json_body={"a": [1, "é"]}, authenticated=False)
            await http.call("POST", "/echo", operation="token", data={"k": "v w", "x": "&="}, authenticated=False)
            await http.call(
                "GET", "/echo?fixed=1", operation="poll", params={"page[limit]": "5"}, headers={"X-Id": "7"}
            )
        sent_json, sent_form, sent_get = peers.requests
        assert json.loads(sent_json["body"]) == {"a": [1, "é"]}
        assert sent_json["headers"]["Content-Type"] == "application/json"
        assert sent_form["body"] == b"k=v+w&x=%26%3D"
        assert sent_form["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        assert sent_get["path"] == "/echo?fixed=1&page%5Blimit%5D=5"
        assert sent_get["body"] == b"" and "Content-Length" not in sent_get["headers"]
        assert sent_get["headers"]["X-Id"] == "7" and sent_get["headers"]["Accept"] == "application/json"
        assert {r["headers"]["User-Agent"] for r in peers.requests} == {"export-worker/1.0 (w-1)"}
        assert {r["headers"]["Accept-Encoding"] for r in peers.requests} == {"identity"}
        assert {r["headers"]["Host"] for r in peers.requests} == {url.removeprefix("http://")}

    @pytest.mark.parametrize("value", ["tok\r\nX-Evil: 1", "tok\nX-Evil: 1", "tok\x00"])
    async def test_a_header_value_with_a_line_break_is_never_written(
        self, client: HttpClient, good: tuple[str, Peers], value: str
    ) -> None:
        url, peers = good
        with pytest.raises(ValueError) as refused:
            await call(client, f"{url}/echo", headers={"Authorization": value})
        assert "tok" not in str(refused.value)  # a value may be a credential: never echoed
        assert peers.requests == [] and client.connections_made == 0

    @pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "Connection", "User-Agent"])
    async def test_a_header_the_client_writes_itself_is_refused(
        self, client: HttpClient, good: tuple[str, Peers], name: str
    ) -> None:
        url, peers = good
        with pytest.raises(ValueError):
            await call(client, f"{url}/echo", headers={name: "1"})
        assert peers.requests == []

    async def test_a_method_goes_in_capitals(self, client: HttpClient, good: tuple[str, Peers]) -> None:
        url, peers = good
        await call(client, f"{url}/echo", "post", body=b"{}")
        assert peers.requests[0]["method"] == "POST" and peers.requests[0]["body"] == b"{}"

    async def test_a_url_said_to_be_encoded_cannot_smuggle_a_line(
        self, client: HttpClient, good: tuple[str, Peers]
    ) -> None:
        url, peers = good
        smuggled = URL.build(
            scheme="http", host="127.0.0.1", port=URL(url).port, path="/echo HTTP/1.1\r\nX: y", encoded=True
        )
        with pytest.raises(ValueError):
            await call(client, smuggled)
        assert peers.requests == []

    async def test_not_http_is_refused(self, client: HttpClient) -> None:
        for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "http:///nohost"):
            with pytest.raises(ValueError):
                await call(client, url)


# ---- servers no vendor should be -------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED_OK = (
    b"HTTP/1.1 200 OK\r\nX-Id: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'8;ext=1\r\n{"status\r\nA\r\n": "done"}\r\n0\r\n\r\n'
)


class Raw:
    """A TCP server whose every connection runs ``handler``; counts connections and the
    ones that ended (the client closed them)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.ended = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended += 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request with ``OK``, keeping the connection (requests carry no body
    these servers read, or a 2-byte one)."""
    while True:
        head = await read_request(reader)
        if b"Content-Length: 2" in head:
            await reader.readexactly(2)
        writer.write(OK)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than an orderly end."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Wait for the client to close the connection (what the server is left to see)."""
    while await reader.read(65536):
        pass


def answering(answer: bytes) -> Handler:
    """A handler that answers the first request with ``answer`` (whatever it is) and
    keeps the connection until the client closes it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await until_closed(reader)

    return handler


async def never_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request and answer nothing until the client closes the connection."""
    await read_request(reader)
    await until_closed(reader)


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, Raw]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, Raw]:
        state = Raw(handler)
        server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", state

    yield start
    for server in servers:
        server.close()


RawServer = Callable[[Handler], Awaitable[tuple[str, Raw]]]


class TestHostileAnswers:
    async def test_a_declared_length_over_the_bound_is_refused_unread(self, client: HttpClient, raw: RawServer) -> None:
        # One byte of the body and nothing more: only the header can refuse it.
        url, server = await raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n{"))
        with pytest.raises(BodyTooLarge) as refused:
            await call(client, url, timeout_s=30.0)
        assert refused.value.status == 200 and "declares 1000000000 bytes" in refused.value.how
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    @pytest.mark.parametrize("framing", ["chunked", "until close"])
    async def test_an_endless_body_is_cut_at_the_bound(self, client: HttpClient, raw: RawServer, framing: str) -> None:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            chunked = framing == "chunked"
            writer.write(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n" if chunked else b"") + b"\r\n")
            piece = b"x" * 8192
            while True:
                writer.write(b"2000\r\n" + piece + b"\r\n" if chunked else piece)
                await writer.drain()

        url, server = await raw(endless)
        started = time.monotonic()
        with pytest.raises(BodyTooLarge) as refused:
            await call(client, url, timeout_s=30.0)
        assert refused.value.how == "stopped reading"
        assert time.monotonic() - started < 10.0  # at the bound, not at the end of the timeout
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    async def test_a_body_that_ends_with_the_connection_is_read_whole(self, client: HttpClient, raw: RawServer) -> None:
        async def unframed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "done"}')
            await writer.drain()

        url, server = await raw(unframed)
        assert (await call(client, url))[::2] == (200, b'{"status": "done"}')
        assert (await call(client, url))[0] == 200
        assert server.connections == 2  # such a connection cannot be reused

    @pytest.mark.parametrize("shape", ["many fields", "one huge field", "a header without end"])
    async def test_headers_past_their_bound_are_refused(self, client: HttpClient, raw: RawServer, shape: str) -> None:
        async def heads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n")
            if shape == "many fields":
                writer.write(b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"Content-Length: 2\r\n\r\n{}")
            elif shape == "one huge field":
                writer.write(b"X-Big: " + b"v" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
            else:
                while True:  # a value that never ends
                    writer.write(b"X-Endless: " + b"v" * 65536)
                    await writer.drain()
            await until_closed(reader)

        url, server = await raw(heads)
        with pytest.raises(HeadTooLarge):
            await call(client, url, timeout_s=30.0)
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    @pytest.mark.parametrize(
        "answer",
        [
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nX: a\nb\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
        ],
    )
    async def test_an_answer_that_is_not_http_breaks_only_its_call(
        self, client: HttpClient, raw: RawServer, answer: bytes
    ) -> None:
        url, server = await raw(answering(answer))
        with pytest.raises(ConnectionBroken):
            await call(client, url)
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

        url, _ = await raw(answering(OK))
        assert (await call(client, url))[::2] == (200, b"{}")

    async def test_a_body_in_tiny_chunks_costs_its_size(self, client: HttpClient, raw: RawServer) -> None:
        pieces = 100_000

        async def tiny(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"2\r\nxy\r\n" * pieces + b"0\r\n\r\n"
            )
            await until_closed(reader)

        url, _ = await raw(tiny)
        tracemalloc.start()
        try:
            status, _, body = await call(client, url, timeout_s=60.0, max_body_bytes=1 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (status, body) == (200, b"xy" * pieces)
        # The wire bytes (0.7 MB, the server's and the client's reads) and the body twice;
        # a list of the pieces would cost ~40 bytes each and ~80 more to join (12 MB).
        assert peak < 4 * len(body) + 2_000_000

    @pytest.mark.parametrize("where", ["trailer", "chunk extension"])
    async def test_endless_framing_after_the_headers_is_refused(
        self, client: HttpClient, raw: RawServer, where: str
    ) -> None:
        async def framing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
            writer.write(b"0\r\nX-Trailer: " if where == "trailer" else b"1;name=")
            while True:
                writer.write(b"v" * 65536)
                await writer.drain()

        url, server = await raw(framing)
        with pytest.raises(HeadTooLarge):
            await call(client, url, timeout_s=30.0)
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    async def test_a_trailer_is_not_read_as_a_header(self, client: HttpClient, raw: RawServer) -> None:
        url, _ = await raw(
            answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nRetry-After: 5\r\n\r\n")
        )
        status, headers, body = await call(client, url)
        assert (status, body) == (200, b"{}") and "Retry-After" not in headers

    async def test_a_reset_in_a_body_that_ends_with_the_connection_is_no_answer(
        self, client: HttpClient, raw: RawServer
    ) -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "do')
            await writer.drain()
            reset(writer)

        url, _ = await raw(cut)
        with pytest.raises(ConnectionBroken):
            await call(client, url)

    async def test_switching_protocols_is_no_answer(self, client: HttpClient, raw: RawServer) -> None:
        url, server = await raw(
            answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx")
        )
        with pytest.raises(ConnectionBroken) as broken:
            await call(client, url)
        assert "switched protocols" in str(broken.value)
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    async def test_a_compressed_answer_is_not_read_as_the_answer(self, client: HttpClient, raw: RawServer) -> None:
        url, _ = await raw(answering(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n\x1f\x8b"))
        with pytest.raises(ConnectionBroken) as refused:
            await call(client, url)
        assert "content-encoded" in str(refused.value)

    async def test_an_answer_trickled_a_byte_at_a_time(self, client: HttpClient, raw: RawServer) -> None:
        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                for i in range(len(CHUNKED_OK)):
                    writer.write(CHUNKED_OK[i : i + 1])
                    await writer.drain()

        url, server = await raw(trickle)
        for _ in range(2):
            status, headers, body = await call(client, url)
            assert (status, headers["X-Id"], body) == (200, "7", b'{"status": "done"}')
        assert server.connections == 1

    async def test_an_interim_answer_is_skipped(self, client: HttpClient, raw: RawServer) -> None:
        async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)

        url, server = await raw(interim)
        for _ in range(3):
            assert (await call(client, url))[::2] == (200, b"{}")
        assert server.connections == 1

    async def test_bytes_nobody_asked_for_drop_the_connection(self, client: HttpClient, raw: RawServer) -> None:
        url, server = await raw(answering(OK + OK))  # a second answer to a request never made
        assert (await call(client, url))[::2] == (200, b"{}")
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")
        assert client.idle_connections() == 0

    async def test_bytes_sent_to_an_idle_connection_drop_it(self, client: HttpClient, raw: RawServer) -> None:
        answered = asyncio.Event()

        async def speaks_out_of_turn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await answered.wait()
            writer.write(OK)  # to nobody's request
            await until_closed(reader)

        url, server = await raw(speaks_out_of_turn)
        await call(client, url)
        answered.set()
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")
        assert client.idle_connections() == 0

    async def test_a_cancelled_call_closes_its_connection(self, client: HttpClient, raw: RawServer) -> None:
        url, server = await raw(never_answering)
        pending = asyncio.create_task(call(client, url, timeout_s=30.0))
        await eventually(lambda: server.connections == 1, timeout=5, what="the request sent")
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")
        assert client.idle_connections() == 0

    async def test_a_timeout_ends_the_call_and_its_connection(self, client: HttpClient, raw: RawServer) -> None:
        url, server = await raw(never_answering)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(client, url, timeout_s=0.3), GUARD_S)
        assert time.monotonic() - started < 2.0
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")

    async def test_the_timeout_bounds_the_whole_answer_not_each_read(self, client: HttpClient, raw: RawServer) -> None:
        """A vendor that keeps sending a byte of its body every 50 ms is still cut off."""

        async def dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)  # the vendor's pace under test, not a wait for the client

        url, server = await raw(dripping)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(client, url, timeout_s=0.5), GUARD_S)
        assert 0.5 <= time.monotonic() - started < 3.0
        await eventually(lambda: server.ended == 1, timeout=5, what="the connection closed")
        assert client.idle_connections() == 0

    async def test_a_call_on_a_kept_connection_times_out_and_the_next_one_gets_a_new_connection(
        self, client: HttpClient, raw: RawServer
    ) -> None:
        answered: list[int] = []

        async def answers_once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            answered.append(1)
            await read_request(reader)  # the second request on this connection is never answered
            await reader.read()

        url, server = await raw(answers_once_per_connection)
        assert (await call(client, url))[0] == 200
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(client, url, timeout_s=0.3), GUARD_S)
        assert time.monotonic() - started < 2.0
        assert (await call(client, url))[0] == 200  # not the timed-out connection
        assert server.connections == 2 and len(answered) == 2

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_a_kept_connection_the_server_dropped_is_retried_when_safe(
        self, client: HttpClient, raw: RawServer, method: str
    ) -> None:
        async def one_answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)  # keep-alive, as far as the client knows
            await read_request(reader)  # ... but the next request is never answered

        url, server = await raw(one_answer_each)
        await call(client, url)
        assert (await call(client, url, method))[::2] == (200, b"{}")  # again, on a new connection
        assert server.connections == 2

    async def test_a_post_on_a_dropped_connection_is_not_sent_again(
        self, client: HttpClient, raw: RawServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(transport, "FRESH_FOR_UNSAFE_S", 3600.0)  # the kept connection is taken

        async def one_answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await read_request(reader)

        url, server = await raw(one_answer_each)
        await call(client, url)
        with pytest.raises(ConnectionBroken):  # the vendor may have acted on it
            await call(client, url, "POST", body=b"{}")
        assert server.connections == 1

    async def test_a_retry_is_made_once(self, client: HttpClient, raw: RawServer) -> None:
        async def first_answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            if server.connections == 1:
                writer.write(OK)
                await read_request(reader)

        url, server = await raw(first_answers_once)
        await call(client, url)
        with pytest.raises(ConnectionBroken):
            await call(client, url)
        assert server.connections == 2

    async def test_nobody_listening(self, client: HttpClient, raw: RawServer) -> None:
        url, _ = await raw(read_request)  # type: ignore[arg-type]
        closed = url.rsplit(":", 1)[0] + ":1"
        with pytest.raises(ConnectFailed):
            await call(client, closed)


class TestVendorHttpErrors:
    """How ``VendorHttp`` names what the client raised."""

    async def test_each_transport_failure_is_a_vendor_error(self, client: HttpClient, raw: RawServer) -> None:
        async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"nonsense\r\n\r\n")

        limits = HttpLimits(max_answer_bytes=LIMIT)
        for handler, expected, words in (
            (
                answering(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"),
                AnswerTooLarge,
                "declares 99999999 bytes",
            ),
            (broken, VendorUnavailable, "connection failed: the answer is not HTTP/1.1"),
            (never_answering, VendorUnavailable, "timed out waiting for the answer"),
        ):
            url, _ = await raw(handler)
            http = VendorHttp(client, connection="c", base_url=url, timeout_s=0.5, limits=limits)
            for method, may_have_acted in (("GET", False), ("POST", True)):
                with pytest.raises(expected) as failed:
                    await http.call(method, "/x", operation="poll", authenticated=False)
                assert words in failed.value.message
                assert failed.value.outcome_unknown is may_have_acted
        http = VendorHttp(client, connection="c", base_url="http://127.0.0.1:1", limits=limits)
        with pytest.raises(VendorUnavailable) as refused:
            await http.call("POST", "/x", operation="submit", authenticated=False)
        assert "cannot connect" in refused.value.message and refused.value.outcome_unknown is False


# ---- HTTPS -------------------------------------------------------------------------------


class TestHttps:
    @pytest.fixture
    async def tls(self) -> AsyncIterator[tuple[str, trustme.CA]]:
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server_context)

        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"secure": request.secure})

        app = web.Application()
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        try:
            yield f"https://localhost:{site._server.sockets[0].getsockname()[1]}", ca  # type: ignore[union-attr]
        finally:
            await runner.cleanup()

    async def test_a_trusted_certificate(self, tls: tuple[str, trustme.CA]) -> None:
        url, ca = tls
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with HttpClient("t", ssl_context=context) as client:
            for _ in range(2):
                status, _, body = await call(client, f"{url}/hello")
                assert (status, json.loads(body)) == (200, {"secure": True})
            assert client.connections_made == 1

    async def test_a_certificate_for_another_name_is_refused(self, tls: tuple[str, trustme.CA]) -> None:
        url, ca = tls
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with HttpClient("t", ssl_context=context) as client:
            with pytest.raises(ConnectFailed) as refused:
                await call(client, f"{url.replace('localhost', '127.0.0.1')}/hello")  # the certificate names localhost
        assert "certificate" in str(refused.value).lower() or "hostname" in str(refused.value).lower()

    async def test_an_unknown_certificate_is_refused_before_sending(self, tls: tuple[str, trustme.CA]) -> None:
        url, _ = tls
        async with HttpClient("t") as client:  # the system's CAs: the test CA is not among them
            with pytest.raises(ConnectFailed) as refused:
                await call(client, f"{url}/hello")
        assert "certificate" in str(refused.value).lower()
