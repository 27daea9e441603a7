"""Pins the WAHA retry policy: which outcomes retry, fail or wait for the session, the Retry-After parser, and
the backoff (exponential ceiling, full jitter, caps in attempts and in total time). Pure: no I/O, no sleeping."""

from __future__ import annotations

import random

import httpx
import pytest

from waha_pipeline.waha.retry import RetryBudget, RetryPolicy, classify, parse_retry_after, retry_cause

_REQ = httpx.Request("GET", "http://waha.test/api/sessions")
NOT_READY = b'{"error":"Session status is not as expected. Try again later or restart the session","status":"STARTING"}'

# ---------------------------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------------------------

CLASSIFY_CASES = [
    (None, httpx.ConnectError("refused", request=_REQ), None, "retry"),
    (None, httpx.ConnectTimeout("slow", request=_REQ), None, "retry"),
    (None, httpx.ReadTimeout("slow", request=_REQ), None, "retry"),
    (None, httpx.PoolTimeout("pool", request=_REQ), None, "retry"),
    (None, httpx.RemoteProtocolError("eof", request=_REQ), None, "retry"),
    (None, httpx.ReadError("reset", request=_REQ), None, "retry"),
    (None, TimeoutError(), None, "retry"),
    (None, ValueError("a bug, not the network"), None, "fail"),
    (408, None, None, "retry"),
    (429, None, None, "retry"),
    (500, None, b"<html>oops</html>", "retry"),
    (502, None, b"<html>Bad Gateway</html>", "retry"),
    (503, None, None, "retry"),
    (504, None, None, "retry"),
    (599, None, None, "retry"),
    (400, None, b'{"message":["sortBy must be one of"]}', "fail"),
    (401, None, b'{"message":"Unauthorized","statusCode":401}', "fail"),
    (403, None, None, "fail"),
    (404, None, b'{"message":"Session not found"}', "fail"),
    (409, None, None, "fail"),
    (301, None, None, "fail"),
    (422, None, NOT_READY, "wait_session"),
    (422, None, NOT_READY.decode(), "wait_session"),
    (422, None, b'{"message":"The method is not implemented by the engine."}', "fail"),
    (422, None, None, "fail"),
]


@pytest.mark.parametrize(
    ("status", "exc", "body", "expected"),
    CLASSIFY_CASES,
    ids=[f"{s}-{type(e).__name__ if e else 'none'}-{i}" for i, (s, e, _, _) in enumerate(CLASSIFY_CASES)],
)
def test_classify(status: int | None, exc: BaseException | None, body: bytes | str | None, expected: str) -> None:
    assert classify(status, exc, body) == expected


@pytest.mark.parametrize(
    ("status", "exc", "cause"),
    [
        (429, None, "429"),
        (408, None, "408"),
        (500, None, "5xx"),
        (503, None, "5xx"),
        (None, httpx.ReadTimeout("t", request=_REQ), "timeout"),
        (None, httpx.ConnectTimeout("t", request=_REQ), "timeout"),
        (None, httpx.ConnectError("refused", request=_REQ), "connect"),
        (None, httpx.RemoteProtocolError("eof", request=_REQ), "transport"),
    ],
    ids=["429", "408", "500", "503", "read-timeout", "connect-timeout", "connect-error", "protocol"],
)
def test_retry_cause(status: int | None, exc: BaseException | None, cause: str) -> None:
    assert retry_cause(status, exc) == cause


# ---------------------------------------------------------------------------------------------------------------
# Retry-After
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Thu, 01 Jan 1970 00:00:30 GMT", 20.0),  # an HTTP-date 20 s after `now`
        ("Thu, 01 Jan 1970 00:00:05 GMT", 0.0),  # already past
    ],
    ids=["absent", "empty", "seconds", "fraction", "zero", "negative", "garbage", "nan", "http-date", "past-date"],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=10.0) == expected


# ---------------------------------------------------------------------------------------------------------------
# backoff
# ---------------------------------------------------------------------------------------------------------------


class CeilingRng(random.Random):
    """Always draws the top of the jitter range, to read the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(
    ("retry_index", "ceiling"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 15.0), (20, 15.0), (500, 15.0)],
    ids=["r0", "r1", "r2", "r3", "r4", "capped", "far", "huge-no-overflow"],
)
def test_backoff_ceiling_doubles_and_is_capped(retry_index: int, ceiling: float) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=15.0)
    assert policy.backoff(retry_index, CeilingRng()) == ceiling


def test_backoff_is_full_jitter() -> None:
    """Full jitter: delays spread over the whole [0, ceiling] range, not around the ceiling."""
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0)
    rng = random.Random(3)
    delays = [policy.backoff(3, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(7.0, 7.0), (0.0, 0.0), (30.0, 30.0), (3600.0, 30.0)],
    ids=["honoured", "zero", "at-cap", "capped"],
)
def test_retry_after_overrides_backoff_up_to_cap(retry_after: float, expected: float) -> None:
    policy = RetryPolicy(retry_after_cap=30.0)
    assert policy.delay(0, CeilingRng(), retry_after) == expected


def test_budget_caps_attempts() -> None:
    budget = RetryBudget(RetryPolicy(max_attempts=3, max_elapsed=1e9), CeilingRng(), lambda: 0.0)
    delays = []
    for _ in range(5):
        budget.attempts += 1
        delays.append(budget.next_delay())
    assert delays == [0.5, 1.0, None, None, None]


def test_budget_caps_total_time() -> None:
    now = [0.0]
    budget = RetryBudget(RetryPolicy(max_attempts=100, base_delay=1.0, max_delay=4.0, max_elapsed=10.0), CeilingRng(), lambda: now[0])
    slept = []
    while True:
        budget.attempts += 1
        delay = budget.next_delay()
        if delay is None:
            break
        slept.append(delay)
        now[0] += delay
    assert slept == [1.0, 2.0, 4.0]  # a further 4 s would end at 11 s > 10 s
    assert sum(slept) <= 10.0


def test_budget_gives_up_when_retry_after_exceeds_remaining_time() -> None:
    budget = RetryBudget(RetryPolicy(max_elapsed=20.0, retry_after_cap=30.0), CeilingRng(), lambda: 0.0)
    budget.attempts = 1
    assert budget.next_delay(25.0) is None
    assert budget.next_delay(15.0) == 15.0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
