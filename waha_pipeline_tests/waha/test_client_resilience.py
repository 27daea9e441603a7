"""Pins the resilience of WahaClient on exact reply sequences (httpx.MockTransport, fake time): the circuit breaker
opens on transient failures only and then refuses without sending, a single probe closes it; concurrent 422s
share one session poller; a server that never answers is bounded per attempt; the per-server limiter is shared by
clients and spaces requests; latency percentiles and the new counters reach `stats()` and `measured()`; the API
key appears in no message or log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest

from waha_pipeline.errors import WahaCircuitOpen, WahaPermanentError, WahaTransientError
from waha_pipeline.waha.breaker import BreakerPolicy
from waha_pipeline.waha.client import WahaClient, WahaTimeouts
from waha_pipeline.waha.retry import RetryPolicy

from .conftest import SECRET, FakeTime, Script, fail_with, reply

pytestmark = pytest.mark.anyio

CHATS = "/api/default/chats"
SESSION = "/api/sessions/default"
WORKING = {"name": "default", "status": "WORKING"}
NOT_READY = {"error": "Session status is not as expected. Try again later or restart the session",
             "session": "default", "status": "STARTING", "expected": ["WORKING"]}


def chats_then_empty() -> list[Callable[[httpx.Request], httpx.Response]]:
    return [reply(200, [{"id": "1@c.us"}]), reply(200, [])]


# ---------------------------------------------------------------------------------------------------------------
# circuit breaker in the request path
# ---------------------------------------------------------------------------------------------------------------


async def test_persistent_503_opens_the_breaker_and_later_calls_send_nothing(
    make_client: Callable[..., WahaClient], fake_time: FakeTime
) -> None:
    script = Script({"*": [reply(503, {"message": "down"})]})
    async with make_client(script, retry=RetryPolicy(max_attempts=4, max_elapsed=1e6)) as waha:
        for _ in range(2):
            with pytest.raises(WahaTransientError) as info:
                await waha.list_chats("default")
            assert not isinstance(info.value, WahaCircuitOpen)
        assert waha.breaker.state == "closed"  # 8 failures < min_calls 10
        with pytest.raises(WahaCircuitOpen) as info:
            await waha.list_chats("default")  # attempts 9 and 10 fail, the 11th is refused
        sent = len(script.requests)
        assert sent == 10
        for _ in range(5):
            with pytest.raises(WahaCircuitOpen):
                await waha.lid_map("default")
        assert len(script.requests) == sent, "an open breaker must not touch the network"
        stats = waha.stats()
    assert stats.breaker_opened == 1 and stats.breaker_rejections == 6 and stats.requests == 10
    text = str(info.value)
    assert text.startswith("WAHA at waha.test is failing: circuit open for 5 s after 10 of the last 10 calls failed")
    assert info.value.path == CHATS and info.value.retry_after == pytest.approx(5.0, abs=0.5)


async def test_after_cool_down_one_probe_closes_the_breaker(
    make_client: Callable[..., WahaClient], fake_time: FakeTime
) -> None:
    script = Script({CHATS: [reply(502, raw=b"bad gateway")] * 10 + chats_then_empty()})
    policy = RetryPolicy(max_attempts=100, base_delay=0.0, max_delay=0.0, max_elapsed=1e6)
    async with make_client(script, retry=policy) as waha:
        with pytest.raises(WahaCircuitOpen):
            await waha.list_chats("default")
        fake_time.now += 5.0
        assert waha.breaker.state == "half_open"
        assert await waha.list_chats("default") == [{"id": "1@c.us"}]
        stats = waha.stats()
    assert waha.breaker.state == "closed"
    assert stats.breaker_opened == 1 and stats.breaker_closed == 1 and len(script.requests) == 12


@pytest.mark.parametrize("probe_status", [200, 503], ids=["probe-ok", "probe-fails"])
async def test_half_open_sends_a_single_probe_and_the_others_await_its_verdict(
    make_client: Callable[..., WahaClient], fake_time: FakeTime, probe_status: int
) -> None:
    """Only the probe reaches WAHA; concurrent calls wait for its verdict (polling the breaker while the clock
    stands still, so no deadline passes): they go on when it closes the breaker and are refused without a request
    when it re-opens it."""
    sent: list[str] = []
    gate = asyncio.Event()
    probe_arrived = asyncio.Event()
    pollers: set[asyncio.Task[object] | None] = set()
    all_waiting = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if len(sent) <= 10:
            return httpx.Response(503)
        if len(sent) == 11:
            probe_arrived.set()
            await gate.wait()
            return httpx.Response(probe_status, json=[])
        return httpx.Response(200, json=[])

    async def poll(seconds: float) -> None:
        """The client's sleep while it waits for the probe's verdict: note the waiter, yield, let no time pass."""
        pollers.add(asyncio.current_task())
        if len(pollers) == 4:
            all_waiting.set()
        await asyncio.sleep(0)

    async with make_client(handler, retry=RetryPolicy(max_attempts=1), sleep=poll) as waha:
        for _ in range(10):
            with pytest.raises(WahaTransientError):
                await waha.get_session("default")
        fake_time.now += 5.0
        calls = [asyncio.ensure_future(waha.list_chats("default")) for _ in range(5)]
        await asyncio.wait_for(asyncio.gather(probe_arrived.wait(), all_waiting.wait()), timeout=60)
        assert len(sent) == 11 and not any(c.done() for c in calls), "one probe in flight, the rest waiting"
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60)
        stats = waha.stats()
    if probe_status == 200:
        assert results == [[]] * 5 and len(sent) == 15 and waha.breaker.state == "closed"
    else:
        assert len(sent) == 11 and waha.breaker.state == "open"
        assert sum(isinstance(r, WahaCircuitOpen) for r in results) == 4 and stats.breaker_rejections == 4
        assert sum(type(r) is WahaTransientError and "HTTP 503" in str(r) for r in results) == 1  # the probe


async def test_a_probe_cancelled_by_its_caller_still_completes_and_closes_the_breaker(
    make_client: Callable[..., WahaClient], fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch_many cancels its other chats when one is refused; the probe among them must still report, or every
    retry of the chunk would probe, be cancelled, and find the breaker half-open again (a livelock)."""
    sent: list[str] = []
    release = asyncio.Event()
    verdicts: list[str | None] = []
    closed = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if len(sent) <= 10:
            return httpx.Response(503)
        await release.wait()  # the probe is still in flight when its siblings are refused
        return httpx.Response(200, json=[])

    # The refused siblings wait for the probe's verdict on fake time, each up to its attempt limit; short limits
    # keep their waits together below the breaker's lost-probe timeout, so the probe stays the only one.
    timeouts = WahaTimeouts(connect=1.0, write=1.0, messages_read=5.0)
    async with make_client(handler, retry=RetryPolicy(max_attempts=1), timeouts=timeouts) as waha:
        for _ in range(10):
            with pytest.raises(WahaTransientError):
                await waha.get_session("default")
        fake_time.now += 5.0
        record = waha.breaker.record

        def observed_record(*args: object, **kw: object) -> str | None:
            changed = record(*args, **kw)  # type: ignore[arg-type]
            verdicts.append(changed)
            if changed == "closed":
                closed.set()
            return changed

        monkeypatch.setattr(waha.breaker, "record", observed_record)
        with pytest.raises(WahaCircuitOpen, match="probe call is in flight"):
            await waha.fetch_many("default", [f"{n}@c.us" for n in range(5)], gte=None, lte=1)
        assert len(sent) == 11 and waha.breaker.state == "half_open" and verdicts == []
        release.set()
        await asyncio.wait_for(closed.wait(), timeout=60)
        assert waha.breaker.state == "closed", "the cancelled probe's success must close the breaker"
        assert await waha.fetch_many("default", ["1@c.us", "2@c.us"], gte=None, lte=1) == {"1@c.us": [], "2@c.us": []}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429], ids=str)
async def test_answers_that_are_not_transient_failures_never_open_the_breaker(
    make_client: Callable[..., WahaClient], status: int
) -> None:
    script = Script({"*": [reply(status, {"message": "no"}, headers={"Retry-After": "0"})]})
    async with make_client(script, retry=RetryPolicy(max_attempts=3, max_elapsed=1e6)) as waha:
        for _ in range(15):
            with pytest.raises((WahaPermanentError, WahaTransientError)) as info:
                await waha.lid_map("default")
            assert not isinstance(info.value, WahaCircuitOpen)
        assert waha.breaker.state == "closed" and waha.stats().breaker_opened == 0


async def test_connection_refused_opens_the_breaker(make_client: Callable[..., WahaClient]) -> None:
    script = Script({"*": [fail_with(httpx.ConnectError, "[Errno 111] Connection refused")]})
    async with make_client(script, retry=RetryPolicy(max_attempts=100, max_elapsed=1e6)) as waha:
        with pytest.raises(WahaCircuitOpen, match=r"10 of the last 10 calls failed \(last: connect\)"):
            await waha.list_sessions()
    assert len(script.requests) == 10


# ---------------------------------------------------------------------------------------------------------------
# 422: one poller per session
# ---------------------------------------------------------------------------------------------------------------


async def test_concurrent_422s_share_one_session_poller(
    make_client: Callable[..., WahaClient], fake_time: FakeTime
) -> None:
    state = {"polls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == SESSION:
            state["polls"] += 1
            return httpx.Response(200, json=WORKING if state["polls"] >= 3 else {**WORKING, "status": "STARTING"})
        if state["polls"] < 3:
            return httpx.Response(422, json=NOT_READY)
        return httpx.Response(200, json=[] if request.url.params["offset"] != "0" else [{"id": "m"}])

    chats = [f"55119000000{n:02d}@c.us" for n in range(20)]
    async with make_client(handler, session_poll_interval=1.0) as waha:
        got = await waha.fetch_many("default", chats, gte=None, lte=10)
        stats = waha.stats()
    assert all(v == [{"id": "m"}] for v in got.values())
    assert stats.requests_by_kind["sessions"] == 3, "one poller for 20 waiting requests"
    assert stats.retries_by_cause == {"session": 20}
    assert fake_time.now == pytest.approx(3.0)


async def test_a_cancelled_waiter_does_not_stop_the_shared_poll_but_the_last_one_does(
    make_client: Callable[..., WahaClient]
) -> None:
    polls = 0
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        if request.url.path == SESSION:
            polls += 1
            await release.wait()
            return httpx.Response(200, json=WORKING)
        return httpx.Response(422 if polls == 0 else 200, json=NOT_READY if polls == 0 else [])

    async with make_client(handler, session_poll_interval=0.0) as waha:
        a = asyncio.ensure_future(waha.list_chats("default"))
        b = asyncio.ensure_future(waha.lid_map("default"))
        for _ in range(50):
            await asyncio.sleep(0)
        assert polls == 1
        a.cancel()  # the request that started the poll goes away
        await asyncio.sleep(0)
        release.set()
        assert await b == {}
        assert a.cancelled() and polls == 1

        release.clear()
        polls = 0
        c = asyncio.ensure_future(waha.list_chats("default"))
        for _ in range(50):
            await asyncio.sleep(0)
        poll = waha._loop._session_polls["default"]
        c.cancel()
        await asyncio.gather(c, return_exceptions=True)
        await asyncio.sleep(0)
        assert poll.task.cancelled(), "nobody waits any more: the poll stops"


# ---------------------------------------------------------------------------------------------------------------
# hangs and time bounds
# ---------------------------------------------------------------------------------------------------------------


async def test_a_server_that_never_answers_is_bounded_per_attempt(make_client: Callable[..., WahaClient]) -> None:
    """httpx's read timeout is per socket read; the attempt limit also bounds a reply that never completes."""

    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    timeouts = WahaTimeouts(connect=0.01, write=0.01, list_read=0.03)
    async with make_client(never, timeouts=timeouts, retry=RetryPolicy(max_attempts=3)) as waha:
        with pytest.raises(WahaTransientError, match=r"ReadTimeout: no complete response within 0.05s.*3 attempts"):
            # a guard, not the bound under test: without the attempt limit this would wait an hour, not fail
            await asyncio.wait_for(waha.list_chats("default"), timeout=600)
        assert waha.stats().retries_by_cause == {"timeout": 2} and waha.stats().requests == 3


async def test_a_hanging_message_page_shrinks(make_client: Callable[..., WahaClient]) -> None:
    """The limit that answered caps the rest of the chat: the probes past the empty page do not grow past it."""
    limits: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        limits.append(int(request.url.params["limit"]))
        if limits[-1] > 100:
            await asyncio.sleep(3600)
        return httpx.Response(200, json=[])

    async with make_client(handler, timeouts=WahaTimeouts(connect=0.01, write=0.01, messages_read=0.03)) as waha:
        assert await waha.fetch_messages("default", "1@c.us", gte=None, lte=10, page_size=400) == []
        assert waha.stats().page_shrinks == 2
    assert limits == [400, 200, 100, 100, 100]


# ---------------------------------------------------------------------------------------------------------------
# limiter in the request path
# ---------------------------------------------------------------------------------------------------------------


async def test_clients_of_one_server_share_its_concurrency_cap() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200, json=[] if request.url.params["offset"] != "0" else [{"id": "m"}])

    url = "http://shared-cap.test"
    chats = [f"{n}@c.us" for n in range(10)]
    async with WahaClient(url, concurrency=3, transport=httpx.MockTransport(handler)) as a, \
            WahaClient(url, concurrency=3, transport=httpx.MockTransport(handler)) as b:
        assert a.limiter is b.limiter
        await asyncio.gather(a.fetch_many("s", chats, gte=None, lte=1), b.fetch_many("s", chats, gte=None, lte=1))
    assert peak == 3, "a per-client semaphore would allow 6"


async def test_rate_limit_spaces_requests(make_client: Callable[..., WahaClient], fake_time: FakeTime) -> None:
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(fake_time.now)
        return httpx.Response(200, json=[])

    async with make_client(handler, rate_per_second=4.0) as waha:
        for _ in range(4):
            await waha.list_sessions()
        stats = waha.stats()
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert stats.limiter_wait_seconds == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------------------
# counters, percentiles, measured()
# ---------------------------------------------------------------------------------------------------------------


async def test_latency_percentiles_of_successful_requests(
    make_client: Callable[..., WahaClient], fake_time: FakeTime
) -> None:
    latencies = iter([0.1] * 90 + [2.0] * 10 + [30.0])

    def handler(request: httpx.Request) -> httpx.Response:
        fake_time.now += next(latencies)
        return httpx.Response(200 if fake_time.now < 500 else 503, json=[])

    async with make_client(handler, retry=RetryPolicy(max_attempts=1)) as waha:
        async def fifty() -> None:
            await asyncio.gather(*(waha.list_sessions() for _ in range(50)))

        (_, scoped) = await waha.measured(fifty())
        for _ in range(50):
            await waha.list_sessions()
        fake_time.now = 1000
        with pytest.raises(WahaTransientError):
            await waha.list_sessions()  # a failed attempt (30 s) is no successful latency
        stats = waha.stats()
    assert stats.latency_count == 100 and stats.requests == 101
    assert stats.latency_p50 == pytest.approx(0.1, rel=0.1)
    assert stats.latency_p95 == pytest.approx(2.0, rel=0.1)
    assert scoped.latency_count == 50 and scoped.latency_p95 == pytest.approx(0.1, rel=0.1)
    delta = stats - scoped
    assert delta.latency_count == 50 and delta.latency_p95 == pytest.approx(2.0, rel=0.1)
    assert stats.to_dict()["latency_p95_ms"] == pytest.approx(2000, rel=0.1)


async def test_measured_scope_gets_waits_shrinks_and_breaker_events(
    make_client: Callable[..., WahaClient], fake_time: FakeTime
) -> None:
    script = Script({
        "/api/default/chats/1@c.us/messages": [fail_with(httpx.ReadTimeout), reply(429, headers={"Retry-After": "3"}, raw=b""),
                                                 reply(200, [])],
        CHATS: [reply(503)],
    })
    async with make_client(script, retry=RetryPolicy(max_attempts=100, max_elapsed=1e6)) as waha:
        _, first = await waha.measured(waha.fetch_messages("default", "1@c.us", gte=1, lte=1, page_size=400,
                                                              last_at=0))  # listed as ended before: no probe

        async def doomed() -> None:
            with pytest.raises(WahaCircuitOpen):
                await waha.list_chats("default")
            with pytest.raises(WahaCircuitOpen):
                await waha.list_chats("default")

        _, second = await waha.measured(doomed())
    assert first.page_shrinks == 1 and first.wait_429_seconds == 3.0 and first.backoff_seconds == 3.0
    assert first.retries_by_cause == {"timeout": 1, "429": 1} and first.breaker_opened == 0
    # the earlier timeout is still in the window: 1 + 8 failures of 10 calls reach 80%
    assert second.breaker_opened == 1 and second.breaker_rejections == 2 and second.requests == 8
    assert second.page_shrinks == 0 and second.wait_429_seconds == 0


# ---------------------------------------------------------------------------------------------------------------
# the API key never leaks
# ---------------------------------------------------------------------------------------------------------------


async def test_api_key_in_no_breaker_limiter_or_retry_message_nor_log(
    make_client: Callable[..., WahaClient], caplog: pytest.LogCaptureFixture
) -> None:
    script = Script({"*": [reply(503, {"message": f"bad key {SECRET}"})]})
    with caplog.at_level(logging.DEBUG):
        async with make_client(script, rate_per_second=1000.0, concurrency=2,
                               retry=RetryPolicy(max_attempts=100, max_elapsed=1e6)) as waha:
            with pytest.raises(WahaCircuitOpen) as opened:
                await waha.list_chats("default")
            with pytest.raises(WahaCircuitOpen) as refused:
                await waha.lid_map("default")
            stats = waha.stats()
        async with WahaClient(f"http://user:{SECRET}@leaky.test", api_key=SECRET,
                              transport=httpx.MockTransport(script), retry=RetryPolicy(max_attempts=100),
                              breaker_policy=BreakerPolicy(), sleep=FakeTime().sleep) as leaky:
            with pytest.raises(WahaCircuitOpen) as labelled:
                await leaky.list_chats("default")
    for error in (opened.value, refused.value, labelled.value):
        assert SECRET not in str(error) and SECRET not in repr(error)
    assert "leaky.test" in str(labelled.value)
    assert SECRET not in repr(stats) and SECRET not in str(stats.to_dict())
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
