"""WahaClient's connections (waha/connections.py: httpx's stock transport in pools of 4) and its bounded body read
(waha/body_limit.py) over real loopback sockets, against a scripted HTTP/1.1 server.

The framing and pool tests drive the product's transports through httpx.AsyncClient and `send_bounded`, as WahaClient
does. Every test runs on asyncio's loop and on uvloop (the chunk fetch loop's, importer/background_loop.py).

Not covered, because httpcore does not guard it: a server that writes bytes past a complete response in the same
segment has them read as the answer to the next request on that connection (WAHA's HTTP server never does; bytes
that reach an idle connection later, such as a 408 before closing, do spend it: see the test below).
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

from waha_pipeline.waha.body_limit import DEFAULT_MAX_BODY, send_bounded
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.connections import KEEPALIVE_EXPIRY_S, waha_transports

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


def client(url: str, connections: int = 4, keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
           headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An httpx client on the product's transport (one pool of `connections`)."""
    [transport] = waha_transports(connections, keepalive_expiry=keepalive_expiry)
    return httpx.AsyncClient(base_url=url, transport=transport, headers=headers)


TIMEOUT = httpx.Timeout(5.0)


async def get(http: httpx.AsyncClient, path: str = "/x", *, params: dict[str, str] | None = None,
              timeout: httpx.Timeout = TIMEOUT, limit: int = DEFAULT_MAX_BODY) -> httpx.Response:
    """A GET as WahaClient sends it: streamed, the body read within the size limit."""
    return await send_bounded(http, "GET", path, params=params, timeout=timeout, limit=limit)


# -- WahaClient on its own connections ----------------------------------------------------------------------------


@pytest.mark.parametrize(("close_after_response", "connections"), [(False, 1), (True, 2)])
def test_connections_are_reused_and_one_closed_by_the_server_while_idle_is_replaced_without_a_retry(
    close_after_response: bool, connections: int
) -> None:
    async def scenario() -> tuple[int, int, int]:
        reply = raw(RESPONSE, close=close_after_response)  # an idle keep-alive connection dropped, as proxies do
        async with Server([], default=reply) as server, WahaClient(server.url, concurrency=1) as waha:
            for n in range(2):
                assert (await waha.get_session("demo")).status == "WORKING"
                if close_after_response:  # the close reaches the client while the connection is idle
                    await server.until(lambda n=n: server.closed > n)
                    await io_turn()
            stats = waha.stats()
            return server.connections, stats.requests, stats.retries

    assert asyncio.run(scenario()) == (connections, 2, 0)


def test_the_client_takes_pools_of_four_connections_in_turn() -> None:
    pools = waha_transports(32)
    assert len(pools) == 8 and all(isinstance(t, httpx.AsyncHTTPTransport) for t in pools)
    assert len(waha_transports(1)) == 1 and len(waha_transports(6)) == 2


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
            contents = [(await get(http)).content for _ in range(4)]
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
            response = await get(http)
            return response.status_code, response.content

    assert asyncio.run(scenario()) == (200, SESSION)


def test_the_request_carries_method_target_query_and_headers() -> None:
    async def scenario() -> bytes:
        async with Server([OK]) as server, client(server.url, headers={"X-Api-Key": "k"}) as http:
            await get(http, "/api/demo/chats/1%402/messages", params={"limit": "100"})
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
                await get(http)
            after = (await get(http)).content
            return caught.type, after, server.connections

    error, after, connections = asyncio.run(scenario())
    assert issubclass(error, (httpx.RemoteProtocolError, httpx.ReadError)) and after == SESSION and connections == 2


def test_bytes_that_reach_an_idle_connection_spend_it() -> None:
    """A server writing to an idle connection (a 408 before closing, say) must not have its bytes read as the
    answer to the next request."""
    go, written = asyncio.Event(), asyncio.Event()
    late = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 5\r\n\r\nstale"

    async def then_unasked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        await go.wait()  # the client has read the response: the connection is idle
        writer.write(late)
        await writer.drain()
        written.set()
        return True

    async def scenario() -> tuple[bytes, int, bytes, int]:
        async with Server([then_unasked, OK]) as server, client(server.url) as http:
            first = (await get(http)).content
            go.set()
            await written.wait()
            await io_turn()
            second = await get(http)
            return first, second.status_code, second.content, server.connections

    assert asyncio.run(scenario()) == (b"first", 200, SESSION, 2)


# -- timeouts, cancellation, the pool -----------------------------------------------------------------------------


def test_a_silent_server_is_a_read_timeout_and_the_connection_is_closed() -> None:
    async def scenario() -> tuple[bytes, int, int]:
        async with Server([silent_until_closed, OK]) as server, client(server.url) as http:
            with pytest.raises(httpx.ReadTimeout):
                await get(http, timeout=httpx.Timeout(5.0, read=0.05))
            after = (await get(http)).content
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
                    await get(http)
            after = (await get(http)).content
            return after, server.connections

    assert asyncio.run(scenario()) == (SESSION, 2)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        async with client(f"http://127.0.0.1:{port}") as http:
            await get(http)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(scenario())


def test_connections_stay_within_the_limit_and_wait_for_a_free_one() -> None:
    slow = raw(RESPONSE, hold=0.02)

    async def scenario() -> tuple[list[int], int, int]:
        async with Server([], default=slow) as server, client(server.url, connections=2) as http:
            codes = await asyncio.gather(*(get(http) for _ in range(10)))
            return [r.status_code for r in codes], server.connections, server.most_open

    codes, connections, most_open = asyncio.run(scenario())
    assert codes == [200] * 10 and connections == 2 and most_open == 2


def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout() -> None:
    async def scenario() -> None:
        async with Server([silent_until_closed]) as server, client(server.url, connections=1) as http:
            stuck = asyncio.ensure_future(get(http))
            await server.until(lambda: len(server.requests) == 1)  # the only connection is taken
            try:
                await get(http, timeout=httpx.Timeout(5.0, pool=0.05))
            finally:
                stuck.cancel()

    with pytest.raises(httpx.PoolTimeout):
        asyncio.run(scenario())


@pytest.mark.parametrize(("keepalive_expiry", "connections"), [(KEEPALIVE_EXPIRY_S, 1), (0.0, 3)])
def test_an_idle_connection_is_kept_for_the_keepalive_expiry_only(keepalive_expiry: float, connections: int) -> None:
    """httpcore dates idle connections on its own clock, so the expiry is shown at its two ends: the product's (a
    connection idle for the blink between requests is reused) and none (it never is)."""

    async def scenario() -> int:
        async with Server([], default=OK) as server, client(server.url, keepalive_expiry=keepalive_expiry) as http:
            for _ in range(3):
                await get(http)
            return server.connections

    assert asyncio.run(scenario()) == connections
