"""The response size limit (WAHA_MAX_RESPONSE_MB: waha/body_limit.py over the client's own transport, and over any
transport given to WahaClient), and the planning deadline (WAHA_PLAN_DEADLINE_SECONDS), against a scripted loopback
server; and how Settings reads both.

An endless (chunked) body, a huge declared Content-Length and a small compressed body that inflates past the limit
all stop at the limit with ResponseTooLarge, which WahaClient turns into a permanent error without retrying.
"""

from __future__ import annotations

import asyncio
import gzip
import pathlib
import httpx
import orjson
import pytest
import sqlalchemy as sa

from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.schema import import_plans
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.errors import ConfigError, WahaPermanentError
from waha_pipeline.importer.channel_plan import PlanRequest, plan_and_record
from waha_pipeline.settings import DEFAULT_MAX_RESPONSE_MB, DEFAULT_PLAN_DEADLINE_S, MB, Settings
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.body_limit import DEFAULT_MAX_BODY, ResponseTooLarge
from waha_pipeline.waha.connections import waha_transports
from waha_pipeline.waha.models import SessionInfo
from waha_pipeline_tests.waha.test_transport import RESPONSE, SESSION, Server, client, get, raw

LIMIT = 256 * 1024
BLOCK = b"[" + b"0," * 32767  # 64 KiB of a JSON array that never ends
SENT_AT_MOST = 16 * 1024 * 1024  # what the server offers; without the limit the client would read all of it

TRANSPORTS = {  # what WahaClient is given: none (its own pools), or any other httpx transport
    "own": lambda: None,
    "given": lambda: waha_transports(2)[0],
}


class Endless:
    """A reply whose body goes on (up to SENT_AT_MOST) until the client stops reading; counts the bytes sent."""

    def __init__(self, *, chunked: bool) -> None:
        self.chunked = chunked
        self.sent = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        framing = b"Transfer-Encoding: chunked" if self.chunked else b"Connection: close"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n\r\n" % framing)
        block = b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK) if self.chunked else BLOCK
        try:
            while self.sent < SENT_AT_MOST:
                writer.write(block)
                await writer.drain()
                self.sent += len(BLOCK)
            writer.write(b"0\r\n\r\n" if self.chunked else b"")
            await writer.drain()
        except ConnectionError:
            return False
        return not self.chunked


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
def test_an_endless_body_stops_at_the_limit(chunked: bool) -> None:
    endless = Endless(chunked=chunked)

    async def scenario() -> tuple[str, bytes]:
        async with Server([endless, raw(RESPONSE)]) as server, client(server.url, connections=2) as http:
            with pytest.raises(ResponseTooLarge) as caught:
                await get(http, "/api/demo/chats", limit=LIMIT)
            after = (await get(http, "/api/sessions/demo", limit=LIMIT)).content  # goes on with a new connection
            return str(caught.value), after

    message, after = asyncio.run(scenario())
    assert message.startswith("GET /api/demo/chats: response body of more than 262144 bytes")
    assert "0.25 MB limit (WAHA_MAX_RESPONSE_MB)" in message
    assert after == SESSION
    assert endless.sent < SENT_AT_MOST  # the client stopped reading: the server could not send it all


def test_a_huge_declared_length_is_refused_before_reading_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n"

    async def scenario() -> str:
        async with Server([raw(head + BLOCK, close=True)]) as server, client(server.url, connections=2) as http:
            with pytest.raises(ResponseTooLarge) as caught:
                await get(http, "/api/demo/lids", limit=LIMIT)
            return str(caught.value)

    assert asyncio.run(scenario()) == (
        "GET /api/demo/lids: response body of 100000000000 bytes (Content-Length), over the 0.25 MB limit "
        "(WAHA_MAX_RESPONSE_MB)"
    )


def test_a_small_compressed_body_that_inflates_past_the_limit_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"[" + b"0," * (4 * LIMIT) + b"0]")  # ~8 KiB on the wire, 2 MiB decoded
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    small = gzip.compress(SESSION)
    fine = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(small), small)

    async def scenario() -> tuple[str, bytes]:
        async with Server([raw(head + bomb), raw(fine)]) as server, client(server.url, connections=2) as http:
            with pytest.raises(ResponseTooLarge) as caught:
                await get(http, limit=LIMIT)
            return str(caught.value), (await get(http, limit=LIMIT)).content

    message, after = asyncio.run(scenario())
    assert "of more than 262144 bytes once decoded" in message and after == SESSION


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_client_fails_an_oversized_page_at_once_naming_the_path_and_the_limit(transport: str) -> None:
    endless = Endless(chunked=True)

    async def scenario() -> tuple[str, int, int]:
        async with Server([endless], default=raw(RESPONSE)) as server, \
                WahaClient(server.url, concurrency=1, transport=TRANSPORTS[transport](),
                           max_response_bytes=LIMIT) as waha:
            with pytest.raises(WahaPermanentError) as caught:
                await waha.list_chats("demo")
            stats = waha.stats()
            return str(caught.value), stats.requests, stats.retries

    message, requests, retries = asyncio.run(scenario())
    assert message.startswith("WAHA GET /api/demo/chats?") and " -> ResponseTooLarge: GET /api/demo/chats: " in message
    assert "(WAHA_MAX_RESPONSE_MB)" in message
    assert (requests, retries) == (1, 0)


def test_an_in_memory_response_over_the_limit_fails_the_same_way() -> None:
    """httpx.MockTransport hands its responses over already read: the limit applies to them too."""
    big = httpx.MockTransport(lambda request: httpx.Response(200, content=b"[" + b"0," * LIMIT + b"0]"))

    async def scenario() -> str:
        async with WahaClient("http://waha.test", concurrency=1, transport=big, max_response_bytes=LIMIT) as waha:
            with pytest.raises(WahaPermanentError) as caught:
                await waha.list_chats("demo")
            return str(caught.value)

    assert f"GET /api/demo/chats: response body of {2 * LIMIT + 3} bytes, over the 0.25 MB limit" in asyncio.run(
        scenario())


def test_the_client_takes_the_limit_given_else_the_default() -> None:
    assert WahaClient("http://waha:3000", max_response_bytes=1000).max_response_bytes == 1000
    assert WahaClient("https://waha.example").max_response_bytes == DEFAULT_MAX_RESPONSE_MB * MB


def test_the_clients_own_transports_stop_at_the_limit_it_is_given() -> None:
    endless = Endless(chunked=True)

    async def scenario() -> str:
        async with Server([endless], default=raw(RESPONSE)) as server, \
                WahaClient(server.url, concurrency=1, max_response_bytes=LIMIT) as waha:
            with pytest.raises(WahaPermanentError) as caught:
                await waha.list_chats("demo")
            return str(caught.value)

    assert "0.25 MB limit (WAHA_MAX_RESPONSE_MB)" in asyncio.run(scenario())
    assert endless.sent < SENT_AT_MOST


def test_settings_read_the_response_limit_in_bytes_and_reject_a_bad_one() -> None:
    assert Settings.from_env({"WAHA_MAX_RESPONSE_MB": "2"}).waha_max_response_bytes == 2 * MB
    assert Settings.from_env({}).waha_max_response_bytes == DEFAULT_MAX_BODY
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WAHA_MAX_RESPONSE_MB": "lots"})
    assert str(caught.value) == "WAHA_MAX_RESPONSE_MB must be a number, got 'lots'"


# -- the planning deadline ----------------------------------------------------------------------------------------


def test_planning_an_endless_chat_list_ends_at_the_deadline_and_records_nothing(tmp_path: pathlib.Path) -> None:
    """Every chats page brings new chats, so paging never ends by itself; the planning deadline ends it."""
    url = f"sqlite:///{tmp_path}/crm.sqlite"
    upgrade(url)
    store = CrmStore.from_url(url)
    server = Server([])
    server_pages = [0]

    async def page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        target = server.requests[-1].split(b" ", 2)[1]
        if b"/chats" in target:
            server_pages[0] += 1
            offset = int(target.split(b"offset=")[1].split(b"&")[0])
            body = orjson.dumps([{"id": f"{5511900000000 + offset + i}@c.us", "name": f"c{offset + i}"}
                                 for i in range(50)])
        else:  # lids: none
            body = b"[]"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        return True

    server.default = page
    session = SessionInfo(name="demo", status="WORKING", tenant_id=None, me_id="5511900000001@c.us",
                          me_push_name="Demo", engine=None)

    async def scenario() -> str:
        async with server, WahaClient(server.url, concurrency=2) as waha:
            with pytest.raises(WahaPermanentError) as caught:
                await plan_and_record(waha, store, session, PlanRequest(), default_tenant="t", plan_time=1_700_000_000,
                                      fetch_deadline=0.5)
            return str(caught.value)

    try:
        message = asyncio.run(scenario())
    finally:
        store.dispose()
    assert message == ("planning 'demo': listing its chats and lids took longer than 0.5 s "
                       "(WAHA_PLAN_DEADLINE_SECONDS); WAHA's chat list may not end")
    assert server_pages[0] > 2  # it was paging on when the deadline came
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(import_plans)).scalar_one() == 0


def test_settings_read_the_planning_deadline_and_reject_a_bad_one() -> None:
    assert Settings.from_env({"WAHA_PLAN_DEADLINE_SECONDS": "0.5"}).waha_plan_deadline_seconds == 0.5
    assert Settings.from_env({}).waha_plan_deadline_seconds == DEFAULT_PLAN_DEADLINE_S
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WAHA_PLAN_DEADLINE_SECONDS": "0"})
    assert str(caught.value) == "WAHA_PLAN_DEADLINE_SECONDS must be a positive number, got '0'"
