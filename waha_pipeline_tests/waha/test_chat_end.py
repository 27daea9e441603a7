"""Pins where a chat's read ends and how far it is proven (SPEC 8), the chat list's cap, and what a 404 means
(SPEC 6.8), against a WAHA store engine on loopback that drops unmappable rows after slicing a page.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from waha_pipeline.errors import WahaChatNotFound, WahaPermanentError, WahaSessionNotFound, WahaSessionNotReady
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.limiter import ServerLimiter

from .conftest import Row, StoreServer

pytestmark = pytest.mark.anyio

CHAT = "5511900000001@c.us"
T0 = 1_760_000_000
LTE = T0 + 10_000


def rows(start: int, n: int, *, hidden: bool = False, prefix: str = "m") -> list[Row]:
    return [Row(f"{prefix}{start + i:04d}", T0 + start + i, hidden) for i in range(n)]


def client(server: StoreServer, **kw: Any) -> WahaClient:
    # its own limiter: the process-wide one of this base URL would outlive the test's event loop
    return WahaClient(server.base_url, limiter=ServerLimiter(server.base_url, concurrency=8), **kw)


def ids(items: list[Any]) -> list[str]:
    return [m["id"] for m in items]


# ---------------------------------------------------------------------------------------------------------------
# the end rule
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [True, False], ids=["last-message-listed", "last-message-unknown"])
async def test_an_all_hidden_page_does_not_end_the_chat(store_server: StoreServer, listed: bool) -> None:
    """Offset 5 holds only hidden rows (its page is []), offset 10 holds messages: every message is read."""
    store_server.chats[CHAT] = rows(0, 5) + rows(5, 5, hidden=True) + rows(10, 3)
    last = T0 + 12
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=5, last_at=last if listed else None)
    assert ids(read.items) == [f"m{i:04d}" for i in (*range(5), 10, 11, 12)]
    assert read.newest == last
    if listed:  # the newest message read reaches the listed time: proven to lte at the first empty page after it
        assert read.proven_to == LTE and store_server.count("/messages") == 4
    else:  # no evidence: two probes past the empty page, then proven only up to the newest read
        assert read.proven_to == last and store_server.count("/messages") == 6


async def test_a_burst_of_hidden_rows_at_the_end_leaves_the_read_unproven(store_server: StoreServer) -> None:
    """The chat list counts a trailing reaction as the last message; the pages end without reaching it. While the
    listed time is ahead, probes double in size until they spanned `max_probe_rows` rows (5+10+20+40 < 100 <=
    5+10+20+40+80), then the read ends proven only to the newest message read."""
    store_server.chats[CHAT] = rows(0, 5) + rows(5, 12, hidden=True)
    async with client(store_server, max_probe_rows=100) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=5, last_at=T0 + 16)
    assert ids(read.items) == [f"m{i:04d}" for i in range(5)]
    assert read.proven_to == T0 + 4 and not read.complete(LTE)
    assert [(int(p["offset"]), int(p["limit"])) for _, p in store_server.requests] == [
        (0, 5), (5, 5), (10, 10), (20, 20), (40, 40), (80, 80)]


async def test_messages_after_the_probes_are_still_read_once_a_probe_finds_one(store_server: StoreServer) -> None:
    """Two all-hidden pages in a row, then messages: the second probe finds them and paging resumes."""
    store_server.chats[CHAT] = rows(0, 2) + rows(2, 10, hidden=True) + rows(12, 2)
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=5, last_at=T0 + 13)
    assert ids(read.items) == ["m0000", "m0001", "m0012", "m0013"] and read.proven_to == LTE


async def test_a_hidden_run_much_longer_than_a_page_costs_requests_logarithmic_in_its_length(
    store_server: StoreServer,
) -> None:
    """1,100 hidden rows between 20 messages and the 3 newest, pages of 7: the probes double until one spans the
    run, where paging through it would take ~157 pages."""
    before, run, after, size = 20, 1100, 3, 7
    store_server.chats[CHAT] = rows(0, before) + rows(before, run, hidden=True) + rows(before + run, after)
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=size,
                                    last_at=T0 + before + run + after - 1)
    assert ids(read.items) == [f"m{i:04d}" for i in (*range(before), *range(before + run, before + run + after))]
    assert read.proven_to == LTE
    data_pages = math.ceil(before / size) + math.ceil(after / size)
    assert store_server.count("/messages") <= data_pages + math.ceil(math.log2(run / size)) + 2


async def test_a_message_at_the_far_end_of_a_probe_is_read_once_and_paging_goes_on_after_the_probe(
    store_server: StoreServer,
) -> None:
    """The probe that finds a message spans 40 rows; paging resumes after those rows, not inside them, so the
    message is not re-read (three re-reads in a row would look like a server ignoring `offset`)."""
    store_server.chats[CHAT] = (rows(0, 5) + rows(5, 74, hidden=True) + rows(79, 1) + rows(80, 221, hidden=True)
                                + rows(301, 1))
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=5, last_at=T0 + 301)
    assert ids(read.items) == ["m0000", "m0001", "m0002", "m0003", "m0004", "m0079", "m0301"]
    assert read.proven_to == LTE
    asked = [(int(p["offset"]), int(p["limit"])) for _, p in store_server.requests]
    assert all(a_off + a_lim <= b_off for (a_off, a_lim), (b_off, _) in zip(asked, asked[1:])), asked


async def test_a_chat_listed_as_ended_before_the_range_ends_at_its_first_empty_page(store_server: StoreServer) -> None:
    store_server.chats[CHAT] = rows(0, 3)
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0 + 100, lte=LTE, page_size=5, last_at=T0 + 2)
    assert read.items == [] and read.proven_to == LTE and store_server.count("/messages") == 1


async def test_a_newest_first_server_is_never_proven(store_server: StoreServer) -> None:
    """WEBJS ignores sortOrder: the newest message comes first, so reaching the listed time proves nothing."""
    store_server.chats[CHAT] = rows(0, 5) + rows(5, 5, hidden=True) + rows(10, 3)

    original = store_server._answer
    store_server._answer = lambda path, params: original(path, {**params, "sortOrder": "desc"})  # type: ignore[method-assign]
    async with client(store_server) as waha:
        read = await waha.read_chat("default", CHAT, gte=T0, lte=LTE, page_size=5, last_at=T0 + 12)
    assert sorted(ids(read.items)) == [f"m{i:04d}" for i in (*range(5), 10, 11, 12)]
    assert read.proven_to is None


async def test_a_clean_account_costs_at_most_two_message_requests_per_chat(store_server: StoreServer) -> None:
    """No hidden rows, the chat list's last-message times as evidence: one data page and the empty page."""
    rng = random.Random(3)
    for n in range(200):
        store_server.chats[f"55119{n:08d}@c.us"] = rows(0, rng.choice([1, 2, 3, 5, 8, 13, 40, 120, 499]),
                                                        prefix=f"c{n}-")
    async with client(store_server) as waha:
        listed = await waha.list_chats("default")
        last_at = {c["id"]: c["conversationTimestamp"] for c in listed}
        reads = await waha.read_many("default", list(last_at), gte=T0 - 86_400, lte=LTE, page_size=500,
                                     last_at=last_at)
    assert all(r.proven_to == LTE for r in reads.values())
    assert sum(len(r.items) for r in reads.values()) == sum(len(v) for v in store_server.chats.values())
    assert store_server.count("/messages") / len(reads) == 2.0


# ---------------------------------------------------------------------------------------------------------------
# the chat list's cap
# ---------------------------------------------------------------------------------------------------------------


async def test_an_endless_chat_list_fails_clearly_at_the_cap(store_server: StoreServer) -> None:
    store_server.endless_chats = True
    async with client(store_server, max_chats=250) as waha:
        with pytest.raises(WahaPermanentError, match="more than 250 items"):
            await waha.list_chats("default", page_size=100)
    assert store_server.count("/chats") == 3


# ---------------------------------------------------------------------------------------------------------------
# 404: the session, or the chat
# ---------------------------------------------------------------------------------------------------------------


async def test_a_404_for_one_chat_of_a_working_session_names_the_chat(store_server: StoreServer) -> None:
    store_server.chats[CHAT] = rows(0, 2)
    store_server.missing_chats.add("5511900000002@c.us")
    async with client(store_server) as waha:
        with pytest.raises(WahaChatNotFound, match="cannot serve chat 5511900000002@c.us") as info:
            await waha.read_many("default", [CHAT, "5511900000002@c.us"], gte=T0, lte=LTE, last_at={CHAT: T0 + 1})
        assert len(await waha.fetch_messages("default", CHAT, gte=T0, lte=LTE, last_at=T0 + 1)) == 2
    assert not isinstance(info.value, WahaSessionNotFound) and info.value.chat_id == "5511900000002@c.us"
    assert store_server.count("/api/sessions/default") == 1


@pytest.mark.parametrize(("status", "error", "text"), [
    (None, WahaSessionNotFound, "session 'default' not found"),
    ("STOPPED", WahaSessionNotReady, "session 'default' is STOPPED"),
])
async def test_a_404_of_a_missing_or_stopped_session_says_so(
    store_server: StoreServer, status: str | None, error: type[Exception], text: str
) -> None:
    store_server.status = status
    async with client(store_server) as waha:
        with pytest.raises(error, match=text) as info:
            await waha.fetch_messages("default", CHAT, gte=T0, lte=LTE)
    assert not isinstance(info.value, WahaChatNotFound)


async def test_a_burst_of_404s_shares_one_session_confirmation(make_client: Callable[..., WahaClient]) -> None:
    """Ten chats of a deleted session answer 404 at once: one `GET /api/sessions/default` explains them all."""
    chats = [f"55119000000{n:02d}@c.us" for n in range(10)]
    answered: list[str] = []
    all_answered = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/sessions/default":
            await all_answered.wait()  # the confirmation is in flight while every chat gets its 404
            return httpx.Response(404, json={"message": "Session not found", "statusCode": 404})
        answered.append(request.url.path)
        if len(answered) == len(chats):
            all_answered.set()
        return httpx.Response(404, json={"message": "We didn't find a session with name 'default'.", "statusCode": 404})

    async with make_client(handler, concurrency=16) as waha:
        results = await asyncio.gather(
            *(waha.fetch_messages("default", c, gte=None, lte=LTE) for c in chats), return_exceptions=True
        )
        sessions = waha.stats().requests_by_kind.get("sessions")
    assert all(isinstance(r, WahaSessionNotFound) for r in results)
    assert sessions == 1

