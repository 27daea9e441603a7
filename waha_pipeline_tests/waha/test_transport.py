"""waha/http11.py and waha/transport.py over real loopback sockets, against a scripted HTTP/1.1 server.

The WahaClient-level tests run on both transports (plain http and the httpcore one kept for https); the framing and
pool tests drive Http11Transport through httpx.AsyncClient, as WahaClient does. Every test runs on asyncio's loop and
on uvloop (the chunk fetch loop's, importer/background_loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.http11 import Http11Transport
from waha_pipeline.waha.transport import httpcore_transport, waha_transports

SESSION = orjson.dumps({"name": "demo", "status": "WORKING", "config": None, "me": None})
Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


def raw(data: bytes, *, close: bool = False, hold: float = 0.0) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(hold)
        return not close

    return reply


async def silent_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Never answer; end when the client closes the connection."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(1024):
            pass
    return False


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(SESSION), SESSION)
OK = raw(RESPONSE)


class Server:
    """Answers each request with the next scripted reply; counts connections, and the most open at once.
    `until` waits for a count (requests read, connections closed) to be reached: no test sleeps for it."""

    def __init__(self, replies: list[Reply], default: Reply | None = None) -> None:
        self.replies = replies
        self.default = default
        self.connections = 0
        self.open = 0
        self.closed = 0  # connections this server has closed, its socket released
        self.most_open = 0
        self.requests: list[bytes] = []
        self._changed = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(60):  # a guard against a hang, not a bound under test
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self._changed.set()
                reply = self.replies.pop(0) if self.replies else self.default
                assert reply is not None, "more requests than scripted replies"
                if not await reply(reader, writer):
                    return
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed += 1
            self._changed.set()


async def io_turn() -> None:
    """Let the event loop poll its sockets once more: a peer's close that is already in the kernel (as after
    Server.until(closed)) is handled by the loop before this returns, on asyncio's loop as on uvloop."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    try:
        b.send(b"x")
        await reader.readexactly(1)
    finally:
        writer.close()
        b.close()


try:
    import uvloop
except ImportError:  # not a dependency on Windows
    uvloop = None


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"] if uvloop else ["asyncio"])
def event_loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "uvloop":
        monkeypatch.setattr(asyncio, "run", uvloop.run)
    return str(request.param)


def client(url: str, **limits: float | int | None) -> httpx.AsyncClient:
    options = {"max_connections": 4, "max_keepalive_connections": 4, "keepalive_expiry": 30.0, **limits}
    return httpx.AsyncClient(base_url=url, transport=Http11Transport(httpx.Limits(**options)))


# -- WahaClient on either transport -------------------------------------------------------------------------------

TRANSPORTS = {
    "http11": lambda: Http11Transport(httpx.Limits(max_connections=1)),
    "httpcore": lambda: httpcore_transport(httpx.Limits(max_connections=1), verify=False),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("close_after_response", "connections"), [(False, 1), (True, 2)])
def test_connections_are_reused_and_one_closed_by_the_server_while_idle_is_replaced_without_a_retry(
    transport: str, close_after_response: bool, connections: int
) -> None:
    async def scenario() -> tuple[int, int, int]:
        reply = raw(RESPONSE, close=close_after_response)  # an idle keep-alive connection dropped, as proxies do
        async with Server([], default=reply) as server, \
                WahaClient(server.url, concurrency=1, transport=TRANSPORTS[transport]()) as waha:
            for n in range(2):
                assert (await waha.get_session("demo")).status == "WORKING"
                if close_after_response:  # the close reaches the client while the connection is idle
                    await server.until(lambda n=n: server.closed > n)
                    await io_turn()
            stats = waha.stats()
            return server.connections, stats.requests, stats.retries

    assert asyncio.run(scenario()) == (connections, 2, 0)


def test_plain_http_gets_one_http11_transport_and_https_small_httpcore_pools() -> None:
    [plain] = waha_transports(httpx.URL("http://waha:3000"), concurrency=32)
    secure = waha_transports(httpx.URL("https://waha.example"), concurrency=32)
    assert isinstance(plain, Http11Transport)
    assert len(secure) == 8 and all(isinstance(t, httpx.AsyncHTTPTransport) for t in secure)


# -- framing -----------------------------------------------------------------------------------------------------


def test_chunked_gzip_and_close_delimited_bodies_are_read_whole() -> None:
    body = orjson.dumps([{"id": i, "body": "x" * 50} for i in range(200)])
    packed = gzip.compress(body)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:1000], body[1000:5000], body[5000:]))
    replies = [
        raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"),
        raw(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)),
        raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, close=True),  # ends with the connection
        OK,
    ]

    async def scenario() -> tuple[list[bytes], int]:
        async with Server(replies) as server, client(server.url) as http:
            contents = [(await http.get("/x")).content for _ in range(4)]
            return contents, server.connections

    contents, connections = asyncio.run(scenario())
    assert contents == [body, body, body, SESSION]
    assert connections == 2  # the close-delimited reply spent its connection; the rest shared one


def test_a_response_split_across_many_small_writes_is_reassembled() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        for i in range(0, len(RESPONSE), 7):
            writer.write(RESPONSE[i:i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        return True

    async def scenario() -> tuple[int, bytes]:
        async with Server([trickle]) as server, client(server.url) as http:
            response = await http.get("/x")
            return response.status_code, response.content

    assert asyncio.run(scenario()) == (200, SESSION)


def test_the_request_carries_method_target_query_and_headers() -> None:
    async def scenario() -> bytes:
        async with Server([OK]) as server, client(server.url) as http:
            await http.get("/api/demo/chats/1%402/messages", params={"limit": "100"}, headers={"X-Api-Key": "k"})
            return server.requests[0]

    request = asyncio.run(scenario())
    assert request.startswith(b"GET /api/demo/chats/1%402/messages?limit=100 HTTP/1.1\r\n")
    assert b"\r\nx-api-key: k\r\n" in request.lower() and b"\r\nhost: 127.0.0.1:" in request.lower()


@pytest.mark.parametrize(
    "garbage",
    [b"HTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
    ids=["bad status line", "body cut short"],
)
def test_a_broken_response_is_a_protocol_error_and_spends_its_connection(garbage: bytes) -> None:
    async def scenario() -> tuple[type[Exception], bytes, int]:
        async with Server([raw(garbage, close=True), OK]) as server, client(server.url) as http:
            with pytest.raises(httpx.TransportError) as caught:
                await http.get("/x")
            after = (await http.get("/x")).content
            return caught.type, after, server.connections

    error, after, connections = asyncio.run(scenario())
    assert issubclass(error, (httpx.RemoteProtocolError, httpx.ReadError)) and after == SESSION and connections == 2


def test_bytes_after_a_complete_response_spend_the_connection() -> None:
    """A server answering with more than it was asked must not have its extra bytes read as the next response."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"

    async def scenario() -> tuple[bytes, bytes, int]:
        async with Server([raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + extra), OK]) as server, \
                client(server.url) as http:
            first = (await http.get("/x")).content
            second = (await http.get("/x")).content
            return first, second, server.connections

    assert asyncio.run(scenario()) == (b"first", SESSION, 2)


# -- timeouts, cancellation, the pool -----------------------------------------------------------------------------


def test_a_silent_server_is_a_read_timeout_and_the_connection_is_closed() -> None:
    async def scenario() -> tuple[bytes, int, int]:
        async with Server([silent_until_closed, OK]) as server, client(server.url) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/x", timeout=httpx.Timeout(5.0, read=0.05))
            after = (await http.get("/x")).content
            await server.until(lambda: server.closed == 1)  # the silent connection ends: the client closed it
            return after, server.connections, server.open

    assert asyncio.run(scenario()) == (SESSION, 2, 1)


def test_a_request_cancelled_mid_body_does_not_leave_its_connection_in_the_pool() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SESSION), SESSION[:10]))
        await writer.drain()
        return await silent_until_closed(reader, writer)  # the rest of the body never comes

    async def scenario() -> tuple[bytes, int]:
        async with Server([half, OK]) as server, client(server.url) as http:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await http.get("/x")
            after = (await http.get("/x")).content
            return after, server.connections

    assert asyncio.run(scenario()) == (SESSION, 2)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        async with client(f"http://127.0.0.1:{port}") as http:
            await http.get("/x")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(scenario())


def test_connections_stay_within_the_limit_and_wait_for_a_free_one() -> None:
    slow = raw(RESPONSE, hold=0.02)

    async def scenario() -> tuple[list[int], int, int]:
        async with Server([], default=slow) as server, client(server.url, max_connections=2) as http:
            codes = await asyncio.gather(*(http.get("/x") for _ in range(10)))
            return [r.status_code for r in codes], server.connections, server.most_open

    codes, connections, most_open = asyncio.run(scenario())
    assert codes == [200] * 10 and connections == 2 and most_open == 2


def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout() -> None:
    async def scenario() -> None:
        async with Server([silent_until_closed]) as server, client(server.url, max_connections=1) as http:
            stuck = asyncio.ensure_future(http.get("/x"))
            await server.until(lambda: len(server.requests) == 1)  # the only connection is taken
            try:
                await http.get("/x", timeout=httpx.Timeout(5.0, pool=0.05))
            finally:
                stuck.cancel()

    with pytest.raises(httpx.PoolTimeout):
        asyncio.run(scenario())


def test_an_idle_connection_older_than_the_keepalive_expiry_is_replaced() -> None:
    now = [0.0]
    transport = Http11Transport(httpx.Limits(max_connections=4, keepalive_expiry=30.0), clock=lambda: now[0])

    async def scenario() -> int:
        async with Server([], default=OK) as server, httpx.AsyncClient(base_url=server.url,
                                                                       transport=transport) as http:
            await http.get("/x")
            now[0] += 29.0
            await http.get("/x")  # reused: idle 29 s
            now[0] += 30.0
            await http.get("/x")  # expired: idle 30 s, a new connection
            return server.connections

    assert asyncio.run(scenario()) == 2
