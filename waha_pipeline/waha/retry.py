"""Retry policy for WAHA calls: one `classify()` decides retry / fail / wait-for-session; backoff with full jitter.

Pure: no I/O, no clock reads except through the injected `clock`; randomness only through the injected `rng`.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx

Decision = Literal["retry", "fail", "wait_session"]

SESSION_NOT_READY_TEXT = "session status is not as expected"
RETRYABLE_STATUSES = frozenset({408, 429})


def classify(status: int | None, exc: BaseException | None, body: bytes | str | None = None) -> Decision:
    """What to do with one failed attempt: a transport exception (`status` None) or a non-2xx status.

    Connection errors, timeouts, 408, 429 and 5xx are retried; a 422 whose body says the session status is not
    as expected waits for the session; everything else (400/401/403/404, other 4xx, 3xx) fails at once.
    """
    if status is None:
        # httpx.TransportError covers connect/read/write/pool timeouts, refused connections, protocol errors.
        return "retry" if isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError)) else "fail"
    if status in RETRYABLE_STATUSES or 500 <= status <= 599:
        return "retry"
    if status == 422:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        return "wait_session" if SESSION_NOT_READY_TEXT in text.lower() else "fail"
    return "fail"


def retry_cause(status: int | None, exc: BaseException | None) -> str:
    """The counter label of a retried attempt: "429", "408", "5xx", "timeout", "connect" or "transport"."""
    if status is not None:
        return "5xx" if status >= 500 else str(status)
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    if isinstance(exc, (httpx.ConnectError, ConnectionError)):
        return "connect"
    return "transport"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Caps for one logical request. Defaults: 6 attempts, 0.5 s doubling to at most 15 s, 60 s in total.

    With full jitter the expected sleep before retry n is half of min(max_delay, base_delay * 2**n): about
    0.25, 0.5, 1, 2, 4 s, so 5 retries cost ~8 s on average and a WAHA restart (tens of seconds) still fails the
    call, leaving the longer wait to Dagster's op-level RetryPolicy (which re-runs the whole chunk).
    """

    max_attempts: int = 6  # attempts in total, including the first one
    base_delay: float = 0.5
    max_delay: float = 15.0  # cap of one backoff sleep
    max_elapsed: float = 60.0  # no retry is started that would end after this many seconds since the first try
    retry_after_cap: float = 30.0  # a longer Retry-After is honoured only up to this

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0 or self.max_elapsed < 0:
            raise ValueError("RetryPolicy values must be positive (max_attempts >= 1)")

    def backoff(self, retry_index: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**retry_index)] (retry_index 0 = first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry_index, 62)))
        return rng.uniform(0.0, ceiling)

    def delay(self, retry_index: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Sleep before the next attempt: the server's Retry-After (capped) when it gave one, else backoff."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_cap)
        return self.backoff(retry_index, rng)


class RetryBudget:
    """Tracks one logical request's attempts and elapsed time against a RetryPolicy."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.rng = rng
        self.clock = clock
        self.started = clock()
        self.attempts = 0  # failed attempts so far (the caller increments it after each retryable failure)

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before the next attempt, or None when the attempt or time cap is reached."""
        if self.attempts >= self.policy.max_attempts:
            return None
        delay = self.policy.delay(self.attempts - 1, self.rng, retry_after)
        if self.clock() - self.started + delay > self.policy.max_elapsed:
            return None
        return delay
