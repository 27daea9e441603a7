"""waha/transport.py over real loopback sockets: connections are reused, and one the server closed while idle is
noticed before reuse (a new connection, not a failed request and a retry)."""

from __future__ import annotations

import asyncio

import orjson

from waha_pipeline.waha.client import WahaClient

SESSION = orjson.dumps({"name": "demo", "status": "WORKING", "config": None, "me": None})


async def _serve(close_after_response: bool) -> tuple[asyncio.Server, list[int]]:
    """A minimal HTTP/1.1 server answering GET /api/sessions/demo; counts the connections it accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while (await reader.readuntil(b"\r\n\r\n")):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(SESSION), SESSION))
            await writer.drain()
            if close_after_response:  # idle keep-alive connection dropped by the server, as proxies do
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


async def _two_requests(close_after_response: bool) -> tuple[int, int, int]:
    server, accepted = await _serve(close_after_response)
    port = server.sockets[0].getsockname()[1]
    try:
        async with WahaClient(f"http://127.0.0.1:{port}", concurrency=1) as client:
            for _ in range(2):
                assert (await client.get_session("demo")).status == "WORKING"
                await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
            stats = client.stats()
            return len(accepted), stats.requests, stats.retries
    finally:
        server.close()


def test_an_open_connection_is_reused() -> None:
    assert asyncio.run(_two_requests(close_after_response=False)) == (1, 2, 0)


def test_a_connection_closed_by_the_server_while_idle_is_replaced_without_a_retry() -> None:
    assert asyncio.run(_two_requests(close_after_response=True)) == (2, 2, 0)
