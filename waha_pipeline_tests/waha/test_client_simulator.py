"""Pins the WahaClient against the real simulator over loopback: every message of a window exactly once even with
short pages (hidden reactions) and duplicated ids, inclusive bounds, the lid map, chat listing with object ids,
sessions, honest request counts, and that the API key never leaks into an error.

Expectations come from the simulator's own dataset builder (same spec and anchor), never from client code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from waha_pipeline.errors import WahaPermanentError, WahaSessionNotFound, WahaSessionNotReady
from waha_pipeline.simulator.generator import build_dataset
from waha_pipeline.simulator.models import (
    DIRECT_OBJ,
    LID_UNKNOWN,
    ONE_TO_ONE_KINDS,
    DatasetSpec,
    SimChat,
    SimSession,
)
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.models import chat_id_of, message_id_of, message_time_of

from .conftest import SECRET, FakeTime

pytestmark = pytest.mark.anyio

ANCHOR = 1_760_000_000
SMALL = DatasetSpec(seed=7, chats=80, target_messages=800)
MEDIUM = DatasetSpec(seed=11, chats=240, target_messages=1500)


# ---------------------------------------------------------------------------------------------------------------
# FIXTURES
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sim() -> Iterator[Any]:
    with run_in_thread(SMALL, port=0, anchor=ANCHOR) as handle:
        yield handle


@pytest.fixture(scope="module")
def small_session() -> SimSession:
    return build_dataset(SMALL, anchor=ANCHOR).sessions["demo"]


def expected_messages(chat: SimChat, gte: int | None, lte: int) -> list[dict[str, Any]]:
    """What the importer must get: served items in the window, in store order, first occurrence of each id."""
    seen: set[str] = set()
    out = []
    for entry in chat.entries:
        if entry.hidden or (gte is not None and entry.ts < gte) or entry.ts > lte:
            continue
        raw = entry.raw()
        key = message_id_of(raw)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(raw)
    return out


def pages(entries: int, page_size: int) -> int:
    """Requests offset paging needs: the full pages, a partial one, and the closing empty page."""
    return math.ceil(entries / page_size) + 1


def message_requests(chat: SimChat, gte: int | None, lte: int, page_size: int) -> int:
    """Requests of a read whose chat list time is its newest served message (SPEC 8), counted on the stored rows
    of the window, hidden ones included (they take offset slots): pages of `page_size`; an all-hidden page is
    followed by pages at the next offsets, each twice the size of the one before, until one serves a message;
    paging resumes at `page_size` after the rows it spanned; the first all-hidden page past the newest served
    message is the last request. A chat the list gives no time serves nothing: its empty page and two more."""
    listed = chat.listed_timestamp()
    _, lo, hi = chat.window(gte, lte, None)
    hidden = [e.hidden for e in chat.entries[lo:hi]]
    served = [i for i, h in enumerate(hidden) if not h]
    if listed is None:
        assert not served, chat.id
        return 3
    assert not served or chat.entries[lo + served[-1]].ts == min(listed, lte), chat.id
    newest = served[-1] if served else -1
    offset, limit, requests = 0, page_size, 0
    while True:
        requests += 1
        if all(hidden[offset: offset + limit]):
            if offset > newest:
                return requests
            offset, limit = offset + limit, limit * 2
        else:
            offset, limit = offset + limit, page_size


def hidden_run_start(chat: SimChat) -> int:
    """Index of the first stored row of the run of hidden rows just before the chat's newest served row."""
    end = max(i for i, e in enumerate(chat.entries) if not e.hidden)
    start = end
    while start > 0 and chat.entries[start - 1].hidden:
        start -= 1
    return start


def busiest(session: SimSession, n: int) -> list[SimChat]:
    """The 1:1 chats with most stored entries (they carry the hidden reactions and duplicates)."""
    return sorted((c for c in session.chats if c.kind in ONE_TO_ONE_KINDS), key=lambda c: -len(c.entries))[:n]


def client(handle: Any, **kw: Any) -> WahaClient:
    return WahaClient(handle.base_url, **kw)


# ---------------------------------------------------------------------------------------------------------------
# TESTS
# ---------------------------------------------------------------------------------------------------------------


# Pages made only of hidden rows come back empty at every size here, page size 1 included; the dataset's
# bursts of 1,100 hidden rows before a busy chat's newest message are longer than any of these pages. The chat
# list's last-message time is the evidence that the read has not reached the chat's end yet.
@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 1000], ids=["p1", "p2", "p3", "p7", "p1000"])
async def test_every_message_exactly_once_with_short_pages(small_sim: Any, small_session: SimSession, page_size: int) -> None:
    chats = busiest(small_session, 4)
    assert any(e.hidden for c in chats for e in c.entries), "dataset should hide reactions in these chats"
    assert any(len(c.entries) - 1 > hidden_run_start(c) + 1000 for c in chats), "a burst should precede the newest"
    async with client(small_sim) as waha:
        for chat in chats:
            read = await waha.read_chat("demo", chat.id, gte=None, lte=ANCHOR, page_size=page_size,
                                        last_at=chat.listed_timestamp())
            assert read.items == expected_messages(chat, None, ANCHOR), chat.id
            assert read.proven_to == ANCHOR, chat.id
            ids = [message_id_of(m) for m in read.items if message_id_of(m) is not None]
            assert len(ids) == len(set(ids))


async def test_duplicated_ids_are_collapsed(small_sim: Any, small_session: SimSession) -> None:
    dup_chats = [c for c in small_session.chats
                 if len({e.external_id for e in c.entries if e.external_id and not e.hidden})
                 < sum(1 for e in c.entries if e.external_id and not e.hidden)]
    assert dup_chats, "the dataset should contain a duplicated message id"
    async with client(small_sim) as waha:
        for chat in dup_chats:
            got = await waha.fetch_messages("demo", chat.id, gte=None, lte=ANCHOR, page_size=2,
                                            last_at=chat.listed_timestamp())
            assert got == expected_messages(chat, None, ANCHOR)


async def test_encoded_items_are_the_same_messages_deduplicated(small_sim: Any, small_session: SimSession) -> None:
    async with client(small_sim) as waha:
        for chat in busiest(small_session, 3):
            got = await waha.fetch_messages("demo", chat.id, gte=None, lte=ANCHOR, page_size=3, encode=orjson.dumps,
                                            last_at=chat.listed_timestamp())
            assert [orjson.loads(text) for text in got] == expected_messages(chat, None, ANCHOR), chat.id


async def test_bounds_are_inclusive(small_sim: Any, small_session: SimSession) -> None:
    chat = busiest(small_session, 1)[0]
    stamps = sorted({e.ts for e in chat.entries if not e.hidden})
    assert len(stamps) >= 4
    gte, lte = stamps[1], stamps[-2]
    async with client(small_sim) as waha:
        got = await waha.fetch_messages("demo", chat.id, gte=gte, lte=lte, page_size=2,
                                        last_at=chat.listed_timestamp())
    expected = expected_messages(chat, gte, lte)
    assert got == expected
    assert any(e.ts == gte for e in chat.entries if not e.hidden) and any(e.ts == lte for e in chat.entries if not e.hidden)
    served_ts = [t for t in map(message_time_of, got) if t is not None]  # GOWS may carry it in _data.Info only
    assert min(served_ts) == gte and max(served_ts) == lte


async def test_message_request_count_is_honest(small_sim: Any, small_session: SimSession) -> None:
    """Offsets count hidden entries too; the burst of hidden rows before the newest message costs a few doubling
    pages, far fewer than paging through it."""
    chat = busiest(small_session, 1)[0]
    page_size = 5
    expected = message_requests(chat, None, ANCHOR, page_size)
    assert expected < pages(len(chat.entries), page_size) // 4
    async with client(small_sim) as waha:
        before = waha.stats()
        await waha.fetch_messages("demo", chat.id, gte=None, lte=ANCHOR, page_size=page_size,
                                  last_at=chat.listed_timestamp())
        delta = waha.stats() - before
    assert delta.requests_by_kind == {"messages": expected}
    assert delta.retries == 0


async def test_chat_listing(small_sim: Any, small_session: SimSession) -> None:
    async with client(small_sim) as waha:
        big = await waha.list_chats("demo")
        small = await waha.list_chats("demo", page_size=7)
        requests = waha.stats().requests_by_kind["chats"]
    assert big == small
    ids = [chat_id_of(c) for c in big]
    assert None not in ids and len(ids) == len(set(ids)) == len(small_session.chats)
    assert ids == sorted(ids)
    wire = {chat_id_of({"id": c.wire_id}) for c in small_session.chats}
    assert set(ids) == wire
    obj_chat = next(c for c in small_session.chats if c.kind == DIRECT_OBJ)
    listed = next(c for c in big if chat_id_of(c) == obj_chat.id)
    assert isinstance(listed["id"], dict) and listed["id"]["_serialized"] == obj_chat.id
    n = len(small_session.chats)
    assert requests == pages(n, 500) + pages(n, 7)


async def test_lid_map(small_sim: Any, small_session: SimSession) -> None:
    async with client(small_sim) as waha:
        got = await waha.lid_map("demo", page_size=4)
    for lid, phone in small_session.lids.items():
        assert got[lid] == phone
    unknown = {c.id.split("@")[0] for c in small_session.chats if c.kind == LID_UNKNOWN}
    assert {lid for lid, phone in got.items() if phone is None} <= unknown
    assert {lid for lid, phone in got.items() if phone is not None} == set(small_session.lids)


async def test_sessions(small_sim: Any, small_session: SimSession) -> None:
    async with client(small_sim) as waha:
        info = await waha.get_session("demo")
        listed = await waha.list_sessions()
        with pytest.raises(WahaSessionNotFound):
            await waha.get_session("no-such-session")
        with pytest.raises(WahaSessionNotFound):
            await waha.list_chats("no-such-session")
    assert info.name == "demo" and info.status == "WORKING" and info.working
    assert info.me_id == f"{small_session.me_phone}@c.us"
    assert [s.name for s in listed] == ["demo"]


async def test_fetch_many_concurrently(small_session: SimSession) -> None:
    """A few hundred 1:1 chats fetched concurrently over a 180-day window: each message exactly once, no retries.

    (The seed-sized account takes ~2,000 requests; on a shared 2-core runner that is several seconds of httpx CPU,
    too slow for this suite, so a 240-chat dataset stands in for it.)
    """
    session = build_dataset(MEDIUM, anchor=ANCHOR).sessions["demo"]
    chats = [c for c in session.chats if c.kind in ONE_TO_ONE_KINDS]
    lte, gte = ANCHOR, ANCHOR - 180 * 86400
    with run_in_thread(MEDIUM, port=0, anchor=ANCHOR) as handle:
        handle.state.faults.latency_ms = 5.0  # so requests overlap on the server and the bound is observable
        async with client(handle, concurrency=16) as waha:
            got = await waha.fetch_many("demo", [c.id for c in chats], gte=gte, lte=lte, page_size=500,
                                        last_at={c.id: c.listed_timestamp() for c in chats})
            stats = waha.stats()
        served = handle.stats()
    assert list(got) == [c.id for c in chats]
    for chat in chats:
        assert got[chat.id] == expected_messages(chat, gte, lte), chat.id
    assert stats.requests_by_kind == {
        "messages": sum(message_requests(c, gte, lte, 500) for c in chats)
    }
    assert served["messages"] == stats.requests == served["total"]  # the client counts what the server saw
    assert 8 < served["max_in_flight"] <= 16  # concurrency is used, and bounded by the semaphore
    assert stats.retries == 0


async def test_api_key_is_sent_and_never_leaks() -> None:
    with run_in_thread(SMALL, port=0, api_key=SECRET, anchor=ANCHOR) as handle:
        async with client(handle, api_key=SECRET) as waha:
            assert (await waha.get_session("demo")).working
        async with client(handle) as anonymous:
            with pytest.raises(WahaPermanentError) as info:
                await anonymous.list_chats("demo")
        async with client(handle, api_key="wrong-key-123456") as wrong:
            with pytest.raises(WahaPermanentError) as info_wrong:
                await wrong.fetch_messages("demo", "1@c.us", gte=None, lte=ANCHOR)
    for error in (info.value, info_wrong.value):
        assert error.status == 401
        assert SECRET not in str(error) and "wrong-key-123456" not in str(error)


async def test_waits_for_a_starting_session_then_proceeds() -> None:
    with run_in_thread(SMALL, port=0, anchor=ANCHOR) as handle:
        handle.set_status("demo", "STARTING")
        fake = FakeTime()

        async def connect_on_third_poll(seconds: float) -> None:
            """The client's sleep between session polls: the session connects while it waits the third time."""
            await fake.sleep(seconds)
            if len(fake.sleeps) == 3:
                handle.set_status("demo", "WORKING")

        async with client(handle, session_poll_interval=0.05, session_wait_timeout=5.0,
                          sleep=connect_on_third_poll, clock=fake.clock) as waha:
            chats = await waha.list_chats("demo")
            stats = waha.stats()
    assert len(chats) == SMALL.chats
    assert stats.retries_by_cause == {"session": 1}
    assert len(fake.sleeps) == 3 and stats.requests_by_kind["sessions"] == 3
    assert stats.session_wait_seconds == pytest.approx(sum(fake.sleeps)) and sum(fake.sleeps) >= 0.15


async def test_session_that_stays_not_working_fails_clearly() -> None:
    with run_in_thread(SMALL, port=0, anchor=ANCHOR) as handle:
        handle.set_status("demo", "SCAN_QR_CODE")
        fake = FakeTime()
        async with client(handle, session_poll_interval=0.05, session_wait_timeout=0.3,
                          sleep=fake.sleep, clock=fake.clock) as waha:
            with pytest.raises(WahaSessionNotReady, match="SCAN_QR_CODE"):
                await waha.fetch_messages("demo", "1@c.us", gte=None, lte=ANCHOR)
        assert fake.now == pytest.approx(0.3)  # it waited out session_wait_timeout, polling, then gave up
        handle.set_status("demo", "STOPPED")
        async with client(handle) as waha:
            with pytest.raises(WahaSessionNotReady, match="HTTP 404.*'demo' is STOPPED"):
                await waha.lid_map("demo")
            assert (await waha.get_session("demo")).status == "STOPPED"
