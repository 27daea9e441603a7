"""Pins the WahaClient's reaction to exact WAHA reply sequences: retries, Retry-After, no retry on 4xx, waiting
for a 422 session, non-JSON bodies, page shrinking on timeouts, paging and dedup, headers and URL encoding.

These use httpx.MockTransport on purpose: an exact status sequence (503, 503, 200; a timeout on one page) cannot
be produced by the simulator yet. The client is also exercised against the real simulator in
test_client_simulator.py. Time is fake: no test sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from waha_pipeline.errors import (
    WahaError,
    WahaPermanentError,
    WahaSessionNotFound,
    WahaSessionNotReady,
    WahaTransientError,
)
from waha_pipeline.waha.client import WahaClient, WahaTimeouts
from waha_pipeline.waha.retry import RetryPolicy

from .conftest import SECRET, FakeTime, Script, fail_with, reply

pytestmark = pytest.mark.anyio

MSGS = "/api/default/chats/5511912345678%40c.us/messages"
MSGS_DECODED = "/api/default/chats/5511912345678@c.us/messages"
CHAT = "5511912345678@c.us"
SESSION = "/api/sessions/default"
WORKING = {"name": "default", "status": "WORKING"}


def msg(n: int, ts: int = 1_760_000_000) -> dict[str, object]:
    return {"id": f"false_{CHAT}_M{n:04d}", "timestamp": ts + n, "fromMe": False, "body": f"m{n}"}


def assert_clean(error: BaseException) -> None:
    """An error message is one line, without the API key."""
    text = str(error)
    assert SECRET not in text and SECRET not in repr(error)
    assert "\n" not in text


async def fetch(waha: WahaClient, **kw: object) -> list[dict[str, object]]:
    # last_at: the chat list's last-message time, the evidence that lets an empty page end the chat at once
    options: dict[str, object] = {"gte": 1_700_000_000, "lte": 1_800_000_000, "page_size": 500,
                                  "last_at": 1_760_000_000}
    options.update(kw)
    return await waha.fetch_messages("default", CHAT, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# retries
# ---------------------------------------------------------------------------------------------------------------


async def test_503_503_200_succeeds_after_two_retries(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(503, {"message": "busy"}), reply(503, raw=b"<html>502</html>"), reply(200, [msg(1)]), reply(200, [])]})
    async with make_client(script) as waha:
        assert await fetch(waha) == [msg(1)]
        stats = waha.stats()
    assert len(script.requests) == 4
    assert stats.requests == 4 and stats.requests_by_kind == {"messages": 4}
    assert stats.retries_by_cause == {"5xx": 2} and stats.retries == 2
    assert len(fake_time.sleeps) == 2
    assert stats.backoff_seconds == pytest.approx(sum(fake_time.sleeps))


async def test_429_retry_after_is_honoured(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(429, {"message": "slow down"}, headers={"Retry-After": "7"}), reply(200, [msg(1)]), reply(200, [])]})
    async with make_client(script) as waha:
        assert await fetch(waha) == [msg(1)]
        stats = waha.stats()
    assert fake_time.sleeps == [7.0]
    assert stats.wait_429_seconds == 7.0 and stats.retries_by_cause == {"429": 1}


async def test_429_retry_after_is_capped(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(429, headers={"Retry-After": "3600"}, raw=b""), reply(200, [])]})
    async with make_client(script, retry=RetryPolicy(retry_after_cap=12.0)) as waha:
        assert await fetch(waha) == []
    assert fake_time.sleeps == [12.0]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, WahaPermanentError), (401, WahaPermanentError), (403, WahaPermanentError), (404, WahaSessionNotFound)],
    ids=["400", "401", "403", "404-session-scoped"],
)
async def test_client_errors_are_not_retried(make_client: Callable[..., WahaClient], fake_time: FakeTime, status: int, error_type: type[WahaError]) -> None:
    """A 404 is confirmed with one session request (here: the session is gone), never retried."""
    script = Script({MSGS_DECODED: [reply(status, {"message": f"nope {SECRET}", "statusCode": status}), reply(200, [])],
                     SESSION: [reply(404, {"message": "Session not found", "statusCode": 404})]})
    async with make_client(script) as waha:
        with pytest.raises(error_type) as info:
            await fetch(waha)
        assert waha.stats().retries == 0
    assert len(script.params(MSGS_DECODED)) == 1 and fake_time.sleeps == []
    assert len(script.requests) == (2 if status == 404 else 1)
    assert info.value.status == status and info.value.path == MSGS
    assert f"HTTP {status}" in str(info.value) and MSGS in str(info.value)
    assert not isinstance(info.value, WahaTransientError)
    assert_clean(info.value)  # even when the server echoes the key back


async def test_404_on_get_session_is_session_not_found(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"/api/sessions/gone": [reply(404, {"message": "Session not found", "statusCode": 404})]})
    async with make_client(script) as waha:
        with pytest.raises(WahaSessionNotFound, match="/api/sessions/gone -> HTTP 404"):
            await waha.get_session("gone")


async def test_404_for_a_missing_route_is_not_session_not_found(make_client: Callable[..., WahaClient]) -> None:
    """An older WAHA without /lids answers Nest's "Cannot GET": the endpoint is missing, not the session."""
    script = Script({"/api/default/lids": [reply(404, {"message": "Cannot GET /api/default/lids?limit=1000&offset=0", "error": "Not Found", "statusCode": 404})]})
    async with make_client(script) as waha:
        with pytest.raises(WahaPermanentError, match="Cannot GET") as info:
            await waha.lid_map("default")
    assert not isinstance(info.value, WahaSessionNotFound)


async def test_persistent_503_gives_up_with_transient_error(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    body = "<html>" + "x" * 5000 + "</html>"
    script = Script({MSGS_DECODED: [reply(503, raw=body.encode())]})
    async with make_client(script, retry=RetryPolicy(max_attempts=4, max_elapsed=1e6)) as waha:
        with pytest.raises(WahaTransientError) as info:
            await fetch(waha)
        assert waha.stats().retries_by_cause == {"5xx": 3}
    assert len(script.requests) == 4 and len(fake_time.sleeps) == 3
    text = str(info.value)
    assert "HTTP 503" in text and "4 attempts" in text and MSGS in text
    snippet = text.split("HTTP 503: ", 1)[1].split(" (gave up", 1)[0]
    assert snippet.startswith("<html>xxx") and len(snippet) <= 200  # the body is truncated
    assert_clean(info.value)


async def test_total_time_cap_stops_retrying_before_attempt_cap(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(502, raw=b"bad gateway")]})
    policy = RetryPolicy(max_attempts=100, base_delay=2.0, max_delay=2.0, max_elapsed=9.0)
    async with make_client(script, retry=policy) as waha:
        with pytest.raises(WahaTransientError):
            await fetch(waha)
    assert fake_time.now <= 9.0
    assert 2 <= len(script.requests) < 100


@pytest.mark.parametrize(
    ("exc_type", "cause"),
    [(httpx.ConnectError, "connect"), (httpx.ReadTimeout, "timeout"), (httpx.RemoteProtocolError, "transport")],
    ids=["connect", "timeout", "protocol"],
)
async def test_transport_errors_are_retried(make_client: Callable[..., WahaClient], exc_type: type[httpx.TransportError], cause: str) -> None:
    script = Script({"/api/default/chats": [fail_with(exc_type), fail_with(exc_type), reply(200, [{"id": "1@c.us"}]), reply(200, [])]})
    async with make_client(script) as waha:
        assert await waha.list_chats("default") == [{"id": "1@c.us"}]
        assert waha.stats().retries_by_cause == {cause: 2}


async def test_connection_refused_for_good_is_transient(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"*": [fail_with(httpx.ConnectError, "[Errno 111] Connection refused")]})
    async with make_client(script) as waha:
        with pytest.raises(WahaTransientError, match="ConnectError: \\[Errno 111\\] Connection refused") as info:
            await waha.list_sessions()
    assert info.value.status is None
    assert_clean(info.value)


# ---------------------------------------------------------------------------------------------------------------
# 422: wait for the session
# ---------------------------------------------------------------------------------------------------------------

NOT_READY = {"error": "Session status is not as expected. Try again later or restart the session", "session": "default", "status": "STARTING", "expected": ["WORKING"]}


async def test_422_then_working_proceeds(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({
        MSGS_DECODED: [reply(422, NOT_READY), reply(200, [msg(1)]), reply(200, [])],
        SESSION: [reply(200, {"name": "default", "status": "STARTING"}), reply(200, WORKING)],
    })
    async with make_client(script, session_poll_interval=1.0) as waha:
        assert await fetch(waha) == [msg(1)]
        stats = waha.stats()
    assert [r.url.path for r in script.requests] == [MSGS_DECODED, SESSION, SESSION, MSGS_DECODED, MSGS_DECODED]
    assert stats.retries_by_cause == {"session": 1}
    assert stats.requests_by_kind == {"messages": 3, "sessions": 2}
    assert stats.session_wait_seconds == pytest.approx(2.0)


async def test_422_that_persists_is_session_not_ready(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(422, NOT_READY)], SESSION: [reply(200, {"name": "default", "status": "SCAN_QR_CODE"})]})
    async with make_client(script, session_wait_timeout=5.0, session_poll_interval=1.0) as waha:
        with pytest.raises(WahaSessionNotReady) as info:
            await fetch(waha)
    assert fake_time.now == pytest.approx(5.0)
    assert "SCAN_QR_CODE" in str(info.value) and "HTTP 422" in str(info.value)
    assert_clean(info.value)


async def test_422_with_session_working_but_endpoint_still_422_is_bounded(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [reply(422, NOT_READY)], SESSION: [reply(200, WORKING)]})
    async with make_client(script, session_wait_timeout=3.0, session_poll_interval=1.0) as waha:
        with pytest.raises(WahaSessionNotReady):
            await fetch(waha)
    assert fake_time.now == pytest.approx(3.0)
    assert len(script.requests) <= 10


async def test_422_and_session_disappears_is_session_not_found(make_client: Callable[..., WahaClient]) -> None:
    script = Script({MSGS_DECODED: [reply(422, NOT_READY)], SESSION: [reply(404, {"message": "Session not found"})]})
    async with make_client(script) as waha:
        with pytest.raises(WahaSessionNotFound):
            await fetch(waha)


async def test_other_422_fails_at_once(make_client: Callable[..., WahaClient]) -> None:
    script = Script({MSGS_DECODED: [reply(422, {"message": "The method is not implemented by the engine.", "statusCode": 422})]})
    async with make_client(script) as waha:
        with pytest.raises(WahaPermanentError) as info:
            await fetch(waha)
    assert not isinstance(info.value, WahaSessionNotReady)
    assert len(script.requests) == 1


# ---------------------------------------------------------------------------------------------------------------
# bodies
# ---------------------------------------------------------------------------------------------------------------


async def test_non_json_200_is_permanent_and_names_the_path(make_client: Callable[..., WahaClient]) -> None:
    script = Script({MSGS_DECODED: [reply(200, raw=b"<html>proxy login</html>")]})
    async with make_client(script) as waha:
        with pytest.raises(WahaPermanentError, match="not JSON") as info:
            await fetch(waha)
    assert len(script.requests) == 1 and MSGS in str(info.value)


async def test_json_object_where_a_list_is_expected_is_permanent(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"/api/default/chats": [reply(200, {"chats": []})]})
    async with make_client(script) as waha:
        with pytest.raises(WahaPermanentError, match="expected a JSON array"):
            await waha.list_chats("default")


# ---------------------------------------------------------------------------------------------------------------
# paging
# ---------------------------------------------------------------------------------------------------------------


async def test_timeout_on_a_page_retries_it_smaller_at_the_same_offset(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [fail_with(httpx.ReadTimeout), fail_with(httpx.ReadTimeout), reply(200, [msg(1), msg(2)]), reply(200, [msg(3)]), reply(200, [])]})
    async with make_client(script, min_page_size=50) as waha:
        assert await fetch(waha, page_size=400) == [msg(1), msg(2), msg(3)]
        stats = waha.stats()
    pages = [(p["limit"], p["offset"]) for p in script.params()]
    assert pages == [("400", "0"), ("200", "0"), ("100", "0"), ("100", "100"), ("100", "200")]
    assert stats.page_shrinks == 2 and stats.retries_by_cause == {"timeout": 2}
    assert fake_time.sleeps == []  # shrinking retries at once


async def test_timeout_at_the_smallest_page_backs_off(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    script = Script({MSGS_DECODED: [fail_with(httpx.ReadTimeout), fail_with(httpx.ReadTimeout), reply(200, [msg(1)]), reply(200, [])]})
    async with make_client(script, min_page_size=50) as waha:
        assert await fetch(waha, page_size=100) == [msg(1)]
    assert [(p["limit"], p["offset"]) for p in script.params()] == [("100", "0"), ("50", "0"), ("50", "0"), ("50", "50")]
    assert len(fake_time.sleeps) == 1


async def test_short_page_is_not_the_end(make_client: Callable[..., WahaClient]) -> None:
    script = Script({MSGS_DECODED: [reply(200, [msg(1), msg(2)]), reply(200, [msg(3), msg(4), msg(5)]), reply(200, [msg(6)]), reply(200, [])]})
    async with make_client(script) as waha:
        assert [m["id"] for m in await fetch(waha, page_size=3)] == [msg(n)["id"] for n in range(1, 7)]
    assert [p["offset"] for p in script.params()] == ["0", "3", "6", "9"]


async def test_messages_are_deduped_by_id_and_idless_items_kept(make_client: Callable[..., WahaClient]) -> None:
    no_id = {"timestamp": 5, "body": "no id"}
    bad_id = {"id": 17, "timestamp": 6}
    first, dup = msg(1), {**msg(1), "body": "dup"}
    script = Script({MSGS_DECODED: [reply(200, [first, no_id, msg(2)]), reply(200, [dup, bad_id, msg(3), no_id]), reply(200, [])]})
    async with make_client(script) as waha:
        got = await fetch(waha, page_size=3)
    assert got == [first, no_id, msg(2), bad_id, msg(3), no_id]


async def test_message_query_is_explicit(make_client: Callable[..., WahaClient]) -> None:
    script = Script({MSGS_DECODED: [reply(200, [])]})
    async with make_client(script) as waha:
        await waha.fetch_messages("default", CHAT, gte=100, lte=200, page_size=250, last_at=50)
        await waha.fetch_messages("default", CHAT, gte=None, lte=200)
    request = script.requests[0]
    assert request.url.raw_path.split(b"?")[0] == MSGS.encode()
    assert dict(request.url.params) == {
        "downloadMedia": "false", "sortBy": "timestamp", "sortOrder": "asc",
        "filter.timestamp.gte": "100", "filter.timestamp.lte": "200", "limit": "250", "offset": "0",
    }
    assert "filter.timestamp.gte" not in script.requests[1].url.params
    assert script.requests[1].url.params["limit"] == "500"


async def test_each_call_kind_has_its_own_explicit_timeout(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"*": [reply(200, [])], SESSION: [reply(200, WORKING)]})
    async with make_client(script, timeouts=WahaTimeouts(sessions_read=11, list_read=22, messages_read=33)) as waha:
        await waha.get_session("default")
        await waha.list_chats("default")
        await waha.lid_map("default")
        await fetch(waha, last_at=None)
    reads = [(r.url.path.rsplit("/", 1)[-1], r.extensions["timeout"]["read"]) for r in script.requests]
    # nothing listed, nothing read: the empty page is probed twice before the read ends unproven
    assert reads == [("default", 11), ("chats", 22), ("lids", 22)] + [("messages", 33)] * 3
    assert all(r.extensions["timeout"]["connect"] == 5.0 for r in script.requests)


async def test_api_key_header_only_when_set(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"/api/sessions": [reply(200, [])]})
    async with make_client(script) as waha:
        await waha.list_sessions()
    async with make_client(script, api_key=None) as waha:
        await waha.list_sessions(all=False)
    assert script.requests[0].headers["X-Api-Key"] == SECRET
    assert "X-Api-Key" not in script.requests[1].headers
    assert [r.url.params["all"] for r in script.requests] == ["true", "false"]


async def test_server_ignoring_offset_is_an_error_not_a_hang(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"/api/default/chats": [reply(200, [{"id": "1@c.us"}, {"id": "2@c.us"}])]})
    async with make_client(script) as waha:
        with pytest.raises(WahaPermanentError, match="ignore offset"):
            await waha.list_chats("default", page_size=2)
    assert len(script.requests) == 4


async def test_chats_dedupe_by_normalized_id(make_client: Callable[..., WahaClient]) -> None:
    a = {"id": {"server": "c.us", "user": "1", "_serialized": "1@c.us"}, "name": "A"}
    a_again = {"id": "1@c.us", "name": "A again"}
    b = {"id": "2@g.us", "name": "B"}
    script = Script({"/api/default/chats": [reply(200, [a, b]), reply(200, [a_again]), reply(200, [])]})
    async with make_client(script) as waha:
        assert await waha.list_chats("default", page_size=2) == [a, b]
    assert [dict(p) for p in script.params()][0] == {"sortBy": "id", "sortOrder": "asc", "limit": "2", "offset": "0"}


async def test_lid_map_pages_until_empty(make_client: Callable[..., WahaClient]) -> None:
    page1 = [{"lid": "111@lid", "pn": "5511900000001@c.us"}, {"lid": "222@lid", "pn": None}]
    page2 = [{"lid": "333@lid", "pn": "5511900000003@s.whatsapp.net"}, {"lid": "bogus", "pn": "1@c.us"}]
    script = Script({"/api/default/lids": [reply(200, page1), reply(200, page2), reply(200, [])]})
    async with make_client(script) as waha:
        assert await waha.lid_map("default", page_size=2) == {"111": "5511900000001", "222": None, "333": "5511900000003"}
    assert [p["offset"] for p in script.params()] == ["0", "2", "4"]


# ---------------------------------------------------------------------------------------------------------------
# concurrency and counters
# ---------------------------------------------------------------------------------------------------------------


async def test_fetch_many_is_bounded_by_the_semaphore(make_client: Callable[..., WahaClient]) -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        chat = request.url.path.split("/")[4]
        offset = int(request.url.params["offset"])
        return httpx.Response(200, json=[{"id": f"{chat}-{offset}", "timestamp": 5}] if offset == 0 else [])

    chats = [f"55119000000{n:02d}@c.us" for n in range(12)]
    async with make_client(handler, concurrency=3) as waha:
        before = waha.stats()
        result = await waha.fetch_many("default", chats, gte=None, lte=10, page_size=10, last_at=dict.fromkeys(chats, 5))
        delta = waha.stats() - before
    assert list(result) == chats
    assert result[chats[5]] == [{"id": f"{chats[5]}-0", "timestamp": 5}]
    assert peak == 3
    assert delta.requests == 24 and delta.requests_by_kind == {"messages": 24}


async def test_fetch_many_first_failure_is_raised(make_client: Callable[..., WahaClient]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "bad" in request.url.path:
            return httpx.Response(400, json={"message": "bad chat id"})
        return httpx.Response(200, json=[])

    async with make_client(handler) as waha:
        with pytest.raises(WahaPermanentError, match="bad%40c.us"):
            await waha.fetch_many("default", ["1@c.us", "bad@c.us", "2@c.us"], gte=None, lte=10)


async def test_stats_difference() -> None:
    from waha_pipeline.waha.client import WahaStats

    before = WahaStats(requests=3, requests_by_kind={"chats": 3}, retries_by_cause={"429": 1}, wait_429_seconds=2.0)
    after = WahaStats(requests=10, requests_by_kind={"chats": 3, "messages": 7}, retries_by_cause={"429": 1, "5xx": 2}, wait_429_seconds=2.0)
    delta = after - before
    assert delta.requests == 7 and delta.requests_by_kind == {"messages": 7}
    assert delta.retries_by_cause == {"5xx": 2} and delta.retries == 2 and delta.wait_429_seconds == 0.0
