"""Pins the circuit breaker's state machine on an injected clock: when it opens (ratio over a sliding window, a
minimum of calls, 4xx/429 neutral), that an open breaker refuses without a permit, that half-open lets exactly
one probe through, that a probe closes it or re-opens it with a doubled (capped) cool-down, that a cancelled
probe frees the slot, that a permit queued across an opening is not confirmed, and that its message names the
server but never credentials.
"""

from __future__ import annotations

import logging
import threading

import pytest

from waha_pipeline.errors import WahaCircuitOpen, WahaTransientError
from waha_pipeline.waha.breaker import BreakerPolicy, CircuitBreaker, Permit, server_label, shared_breaker

from .conftest import SECRET

POLICY = BreakerPolicy(window=10, min_calls=5, failure_ratio=0.6, cool_down=5.0, max_cool_down=12.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(breaker: CircuitBreaker, clock: Clock, script: str) -> list[str]:
    """Play a script of space-separated steps and return what each step observed.

    ok / fail / neutral: one call with that outcome -> the state after it, or "rejected" when refused.
    +N: advance the clock N seconds -> the state.
    """
    seen = []
    for step in script.split():
        if step.startswith("+"):
            clock.now += float(step[1:])
            seen.append(breaker.state)
            continue
        try:
            permit = breaker.allow()
        except WahaCircuitOpen:
            seen.append("rejected")
            continue
        breaker.record(permit, {"ok": "success", "fail": "failure", "neutral": "neutral"}[step], "5xx")
        seen.append(breaker.state)
    return seen


C, O, H, R = "closed", "open", "half_open", "rejected"

CASES = [
    # name, script, expected observations
    ("below min_calls never opens", "fail fail fail fail", [C, C, C, C]),
    ("opens at min_calls when ratio reached", "fail fail fail fail fail", [C, C, C, C, O]),
    ("ratio below threshold stays closed", "ok ok fail fail ok fail ok", [C] * 7),
    ("ratio reached later in the window", "ok ok fail fail fail", [C, C, C, C, O]),  # 3/5 = 0.6
    ("neutral (4xx, 429) does not count", "neutral neutral neutral fail fail fail neutral neutral", [C] * 8),
    ("old successes slide out of the window", "ok " * 10 + "fail " * 6, [C] * 15 + [O]),  # 6 of the last 10
    ("open refuses calls", "fail fail fail fail fail ok ok", [C, C, C, C, O, R, R]),
    ("cool-down passes to half-open", "fail fail fail fail fail +4.9 +0.1", [C, C, C, C, O, O, H]),
    ("probe success closes", "fail fail fail fail fail +5 ok ok", [C, C, C, C, O, H, C, C]),
    ("neutral probe (server answered) closes", "fail fail fail fail fail +5 neutral", [C, C, C, C, O, H, C]),
    ("failed probe re-opens for twice as long",
     "fail fail fail fail fail +5 fail +5 +5 ok", [C, C, C, C, O, H, O, O, H, C]),
    ("cool-down doubling is capped", "fail fail fail fail fail +5 fail +10 fail +12 fail +12 ok",
     [C, C, C, C, O, H, O, H, O, H, O, H, C]),
    ("after closing the window starts empty", "fail fail fail fail fail +5 ok fail fail fail fail",
     [C, C, C, C, O, H, C, C, C, C, C]),
    ("cool-down resets after closing", "fail fail fail fail fail +5 fail +10 ok fail fail fail fail fail +5",
     [C, C, C, C, O, H, O, H, C, C, C, C, C, O, H]),
]


@pytest.mark.parametrize(("script", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_state_machine(script: str, expected: list[str]) -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    assert run(breaker, clock, script) == expected


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    run(breaker, clock, "fail fail fail fail fail +5")
    probe = breaker.allow()
    assert probe.probe
    for _ in range(3):
        with pytest.raises(WahaCircuitOpen, match="half-open, a probe call is in flight"):
            breaker.allow()
    assert breaker.record(probe, "success") == "closed"
    assert not breaker.allow().probe


def test_cancelled_probe_frees_the_half_open_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    run(breaker, clock, "fail fail fail fail fail +5")
    breaker.release(breaker.allow())
    assert breaker.allow().probe  # another call may probe now


def test_a_lost_probe_is_replaced_after_the_probe_timeout() -> None:
    """A probe whose event loop died never reports; without a lease the breaker would stay half-open forever."""
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", BreakerPolicy(min_calls=1, window=1, probe_timeout=30.0), clock=clock)
    run(breaker, clock, "fail +5")
    assert breaker.allow().probe
    clock.now += 29.0
    with pytest.raises(WahaCircuitOpen):
        breaker.allow()
    clock.now += 2.0
    second = breaker.allow()
    assert second.probe
    assert breaker.record(second, "success") == "closed"


def test_outcomes_of_calls_started_before_the_breaker_opened_are_ignored() -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    early = [breaker.allow() for _ in range(3)]
    run(breaker, clock, "fail fail fail fail fail +5")
    probe = breaker.allow()
    for permit in early:  # in flight across the opening; late outcomes must neither close nor re-open it
        assert breaker.record(permit, "success") is None
        assert breaker.record(permit, "failure") is None
    assert breaker.state == "half_open"
    assert breaker.record(probe, "success") == "closed"


def test_a_permit_issued_before_the_breaker_opened_is_not_confirmed_until_it_closes_again() -> None:
    """A call that got its permit and then queued for a connection must not be sent once the breaker is open."""
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    queued = breaker.allow()
    breaker.confirm(queued)  # still closed: goes out
    run(breaker, clock, "fail fail fail fail fail")
    with pytest.raises(WahaCircuitOpen, match="circuit open"):
        breaker.confirm(queued, "GET /x")
    clock.now += 5
    probe = breaker.allow()
    breaker.confirm(probe)  # the half-open probe itself is never held back
    with pytest.raises(WahaCircuitOpen, match="probe call is in flight"):
        breaker.confirm(queued)
    breaker.record(probe, "success")
    breaker.confirm(queued)  # closed again: the old permit may go (its outcome is ignored as stale)
    assert breaker.rejections == 2


def test_counters_and_one_log_line_per_change(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = CircuitBreaker("http://waha:3000", POLICY, clock=clock)
    with caplog.at_level(logging.INFO, logger="waha_pipeline.waha.breaker"):
        run(breaker, clock, "fail fail fail fail fail fail ok ok +5 fail +10 ok")
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 2, "half_open->open": 1,
                                   "half_open->closed": 1}
    assert breaker.opened == 2 and breaker.rejections == 3
    assert len(caplog.records) == sum(breaker.transitions.values())


def test_open_message_names_server_counts_and_remaining_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(f"http://admin:{SECRET}@waha.example:3000/base", POLICY, clock=clock)
    run(breaker, clock, "ok ok fail fail fail")
    clock.now += 1.5
    with pytest.raises(WahaCircuitOpen) as info:
        breaker.allow("WAHA GET /api/default/chats")
    text = str(info.value)
    assert text == ("WAHA at waha.example:3000 is failing: circuit open for 4 s after 3 of the last 5 calls failed "
                    "(last: 5xx); not sent: WAHA GET /api/default/chats")
    assert isinstance(info.value, WahaTransientError) and info.value.retry_after == pytest.approx(3.5)
    assert SECRET not in text and "admin" not in text


@pytest.mark.parametrize(("url", "label"), [
    ("http://127.0.0.1:3000", "127.0.0.1:3000"),
    ("https://user:pw@waha.example.com/", "waha.example.com"),
    ("http://waha", "waha"),
])
def test_server_label_drops_credentials_and_path(url: str, label: str) -> None:
    assert server_label(url) == label


def test_shared_breaker_is_one_per_base_url() -> None:
    a = shared_breaker("http://shared-breaker.test:1/")
    assert shared_breaker("http://shared-breaker.test:1") is a
    assert shared_breaker("http://shared-breaker.test:2") is not a


def test_thread_safe_under_concurrent_calls() -> None:
    """Many threads hammering one breaker: every allow() is matched by one record(), counts stay consistent."""
    breaker = CircuitBreaker("http://waha:3000", BreakerPolicy(window=50, min_calls=50, failure_ratio=1.0))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(2000):
                permit = breaker.allow()
                breaker.record(permit, "success")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and breaker.state == "closed" and not breaker.transitions


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(window=5, min_calls=6)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_ratio=0)
    with pytest.raises(ValueError):
        BreakerPolicy(cool_down=10, max_cool_down=5)
    assert Permit(True, 0).probe
