"""Pins the client against the real simulator over loopback with injected faults: with 30% 5xx and 10% 429 every
message still arrives exactly once; a server answering 503 to everything opens the breaker, after which calls
fail fast without a request reaching the server, and one probe closes it once the server is back; a server that
hangs is bounded by the attempt timeouts.

Faults are seeded and hashed per request (simulator/faults.py), so each run replays the same outcomes. Retry
sleeps are tiny or fake; no test waits for a real cool-down.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waha_pipeline.errors import WahaCircuitOpen, WahaTransientError
from waha_pipeline.simulator.faults import Faults
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline.waha.breaker import CircuitBreaker
from waha_pipeline.waha.client import WahaClient, WahaTimeouts
from waha_pipeline.waha.limiter import ServerLimiter
from waha_pipeline.waha.models import message_id_of
from waha_pipeline.waha.retry import RetryPolicy

from .conftest import FakeTime
from .test_client_simulator import ANCHOR, SMALL, busiest, expected_messages

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_attempts=12, base_delay=0.001, max_delay=0.01, retry_after_cap=0.01, max_elapsed=30)


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    with run_in_thread(SMALL, port=0, anchor=ANCHOR) as handle:
        yield handle


@pytest.fixture
def handle(sim: Any) -> Iterator[Any]:
    sim.set_faults(Faults())
    sim.reset_stats()
    yield sim
    sim.set_faults(Faults())


def client(handle: Any, breaker: CircuitBreaker | None = None, **kw: Any) -> WahaClient:
    """A client with its own breaker and limiter: the process-wide ones would carry state between tests."""
    return WahaClient(handle.base_url, breaker=breaker or CircuitBreaker(handle.base_url),
                      limiter=ServerLimiter(concurrency=8), **kw)


async def test_every_message_exactly_once_through_5xx_and_429(handle: Any) -> None:
    session = handle.state.dataset.sessions["demo"]
    chats = busiest(session, 12)
    handle.set_faults(error_rate=0.3, rate_limit_rate=0.1, html_error_rate=0.3, seed=5)
    async with client(handle, retry=FAST_RETRY) as waha:
        got = await waha.fetch_many("demo", [c.id for c in chats], gte=None, lte=ANCHOR, page_size=3,
                                    last_at={c.id: c.listed_timestamp() for c in chats})
        stats = waha.stats()
        breaker = waha.breaker
    for chat in chats:
        assert got[chat.id] == expected_messages(chat, None, ANCHOR), chat.id
        ids = [message_id_of(m) for m in got[chat.id] if message_id_of(m) is not None]
        assert len(ids) == len(set(ids))
    served = handle.stats()
    assert stats.retries_by_cause.get("5xx", 0) > 20 and stats.retries_by_cause.get("429", 0) > 5
    assert stats.requests == served["total"], "the client counts what the server saw"
    assert stats.breaker_opened == 0 and breaker.state == "closed"
    assert stats.latency_count == stats.requests - stats.retries and stats.latency_p95 is not None


async def test_server_down_opens_the_breaker_then_calls_fail_fast_and_a_probe_closes_it(handle: Any) -> None:
    fake = FakeTime()
    breaker = CircuitBreaker(handle.base_url, clock=fake.clock)
    handle.set_faults(down=True)
    async with client(handle, breaker, retry=RetryPolicy(max_attempts=4), sleep=fake.sleep, clock=fake.clock) as waha:
        failures = []
        for _ in range(3):
            with pytest.raises(WahaTransientError) as info:
                await waha.list_chats("demo")
            failures.append(info.value)
        assert isinstance(failures[-1], WahaCircuitOpen) and not isinstance(failures[0], WahaCircuitOpen)
        reached = handle.stats()["total"]
        assert reached == 10 and handle.stats()["by_status"] == {"503": 10}

        for _ in range(20):
            with pytest.raises(WahaCircuitOpen, match=r"WAHA at 127\.0\.0\.1:\d+ is failing: circuit open for 5 s"):
                await waha.fetch_messages("demo", "1@c.us", gte=None, lte=ANCHOR)
        assert handle.stats()["total"] == reached, "no request may reach the server while the breaker is open"

        handle.set_faults(Faults())
        fake.now += 5.0
        chats = await waha.list_chats("demo")
        stats = waha.stats()
    assert len(chats) == SMALL.chats and breaker.state == "closed"
    assert stats.breaker_opened == 1 and stats.breaker_closed == 1 and stats.breaker_rejections == 21


async def test_a_hanging_server_is_bounded_by_the_attempt_timeouts(handle: Any) -> None:
    """Each attempt is cut by its read timeout: a hang of a minute never answers within the test, so three
    ReadTimeouts (and three hung requests at the server) show that no attempt waited for the hang to end."""
    handle.set_faults(hang_rate=1.0, hang_s=60.0, only_kinds=("chats",))
    timeouts = WahaTimeouts(connect=1.0, write=1.0, list_read=0.1)
    fake = FakeTime()
    async with client(handle, timeouts=timeouts, retry=RetryPolicy(max_attempts=3, base_delay=0.5),
                      sleep=fake.sleep, clock=fake.clock) as waha:
        with pytest.raises(WahaTransientError, match="ReadTimeout.*gave up after 3 attempts"):
            await waha.list_chats("demo")
        assert waha.stats().retries_by_cause == {"timeout": 2} and len(fake.sleeps) == 2
        assert (await waha.get_session("demo")).working  # other kinds are not faulted: the client is fine
    served = handle.stats()
    assert served["chats"] == 3 and served["faults"]["hang"] == 3 and served["sessions"] >= 1
