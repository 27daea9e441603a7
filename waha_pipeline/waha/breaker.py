"""Circuit breaker per WAHA server: closed -> open -> half-open -> closed, over a sliding window of call outcomes.

Thread-safe (one breaker is shared by every client of a server in the process, whatever its event loop); reads
time only through the injected `clock`; never touches the network. Knows nothing about httpx.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from waha_pipeline.errors import WahaCircuitOpen

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "neutral"]


@dataclass(frozen=True)
class BreakerPolicy:
    """When to open and for how long. Defaults: open when >= 80% of the last 20 calls (at least 10 seen) failed.

    80% rather than 50%: with a WAHA failing 30% of calls at random (which retries absorb), a 20-call window holds
    >= 10 failures ~5% of the time, so a 50% breaker would trip again and again on a server that works; >= 16 of 20
    has odds ~5e-6. A dead server (refused connections, 503 to everything) still trips after 10 calls.
    A failed probe doubles the cool-down, up to `max_cool_down` (30 s: a WAHA restart takes tens of seconds, and
    a chunk retried after `WahaCircuitOpen.retry_after` should find it probing, not still open for minutes).
    """

    window: int = 20
    min_calls: int = 10
    failure_ratio: float = 0.8
    cool_down: float = 5.0
    max_cool_down: float = 30.0
    probe_timeout: float = 120.0  # a probe out longer than this is presumed lost (its event loop died): probe again

    def __post_init__(self) -> None:
        if not (1 <= self.min_calls <= self.window) or not (0 < self.failure_ratio <= 1):
            raise ValueError("BreakerPolicy needs 1 <= min_calls <= window and 0 < failure_ratio <= 1")
        if self.cool_down <= 0 or self.max_cool_down < self.cool_down:
            raise ValueError("BreakerPolicy needs 0 < cool_down <= max_cool_down")


@dataclass(frozen=True)
class Permit:
    """Leave to send one call; `probe` is True for the single call a half-open breaker lets through."""

    probe: bool
    generation: int  # the breaker's open/close cycle the permit was issued in; stale outcomes are ignored


def server_label(base_url: str) -> str:
    """`host:port` of a base URL, without user info (which could hold credentials) or path."""
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    return f"{host}:{parts.port}" if parts.port else host


class CircuitBreaker:
    """Breaker of one WAHA server. Call `allow()` before sending, then `record()` (or `release()`) exactly once.

    Only transient failures (connection errors, timeouts, 408, 5xx) count as failures; 2xx counts as success;
    4xx answers and 429 are neutral (the server is alive and answering) and stay out of the window, except that a
    half-open probe that gets any answer other than a failure closes the breaker.

    Half-open issues exactly one probe permit; `allow()` refuses everyone else. (WahaClient makes those callers
    wait, bounded, for the probe's verdict via `probing`, instead of failing the chunk that carries the probe.)
    """

    def __init__(self, base_url: str, policy: BreakerPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = server_label(base_url)
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._window: deque[bool] = deque(maxlen=self.policy.window)  # True = failure
        self._state: State = "closed"
        self._generation = 0
        self._open_until = 0.0
        self._cool_down = self.policy.cool_down
        self._probe_out = False
        self._probe_since = 0.0
        self._tripped = (0, 0, "")  # failures, calls, last cause when it last opened
        self.transitions: Counter[str] = Counter()  # "closed->open", "open->half_open", "half_open->closed", ...
        self.rejections = 0

    # -- observability ----------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; an open breaker whose cool-down has passed reads as half_open."""
        with self._lock:
            self._refresh()
            return self._state

    @property
    def probing(self) -> bool:
        """Half-open with a probe in flight: its verdict (closed or open again) is coming."""
        with self._lock:
            self._refresh()
            return (self._state == "half_open" and self._probe_out
                    and self._clock() - self._probe_since <= self.policy.probe_timeout)

    @property
    def opened(self) -> int:
        return self.transitions["closed->open"] + self.transitions["half_open->open"]

    # -- protocol ---------------------------------------------------------------------------------------------

    def allow(self, what: str = "") -> Permit:
        """A permit to send, or WahaCircuitOpen (without touching the network) while open / while a probe is out."""
        with self._lock:
            self._refresh()
            if self._state == "closed":
                return Permit(False, self._generation)
            if self._state == "half_open" and (
                not self._probe_out or self._clock() - self._probe_since > self.policy.probe_timeout
            ):
                if self._probe_out:
                    logger.warning("WAHA at %s: probe call lost (no outcome after %.0f s); sending another",
                                   self.label, self._clock() - self._probe_since)
                self._probe_out = True
                self._probe_since = self._clock()
                return Permit(True, self._generation)
            raise self._rejection(what)

    def confirm(self, permit: Permit, what: str = "") -> None:
        """Raise WahaCircuitOpen if the circuit left `closed` since this ordinary permit was issued: a call that
        got its permit and then waited for a connection slot must not go out once the breaker has opened (with
        many calls queued at the limiter, those were most of the calls an outage still let through)."""
        with self._lock:
            self._refresh()
            if not permit.probe and self._state != "closed":  # ordinary permits are only issued while closed
                raise self._rejection(what)

    def _rejection(self, what: str) -> WahaCircuitOpen:
        self.rejections += 1
        failures, calls, cause = self._tripped
        remaining = max(0.0, self._open_until - self._clock())
        if self._state == "open":
            why = f"circuit open for {math.ceil(remaining - 1e-3)} s"
        else:
            why = "circuit half-open, a probe call is in flight"
        message = (f"WAHA at {self.label} is failing: {why} after {failures} of the last {calls} calls failed"
                   + (f" (last: {cause})" if cause else "")
                   + (f"; not sent: {what}" if what else ""))
        return WahaCircuitOpen(message, retry_after=remaining or self.policy.cool_down)

    def record(self, permit: Permit, outcome: Outcome, cause: str = "") -> State | None:
        """Record a call's outcome; returns the new state when this outcome changed it, else None.

        `cause` is a short label ("5xx", "timeout", "connect"...) kept for the open message; never a URL or body.
        """
        with self._lock:
            if permit.generation != self._generation:
                return None  # the call started before the last transition; its outcome says nothing new
            if permit.probe:
                self._probe_out = False
                if outcome == "failure":
                    self._cool_down = min(self.policy.max_cool_down, self._cool_down * 2)
                    self._tripped = (*self._tripped[:2], cause)
                    return self._open("half_open")
                return self._close()
            if self._state != "closed" or outcome == "neutral":
                return None
            self._window.append(outcome == "failure")
            failures, calls = sum(self._window), len(self._window)
            if calls >= self.policy.min_calls and failures >= self.policy.failure_ratio * calls:
                self._tripped = (failures, calls, cause)
                self._cool_down = self.policy.cool_down
                return self._open("closed")
            return None

    def release(self, permit: Permit) -> None:
        """The call ended without an outcome (cancelled): a probe permit goes back so another call can probe."""
        with self._lock:
            if permit.probe and permit.generation == self._generation:
                self._probe_out = False

    # -- transitions (lock held) ------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._state == "open" and self._clock() >= self._open_until:
            self._transition("half_open")
            self._probe_out = False

    def _open(self, source: State) -> State:
        self._open_until = self._clock() + self._cool_down
        self._transition("open")
        failures, calls, cause = self._tripped
        if source == "closed":
            logger.warning("WAHA at %s: circuit opened for %.0f s, %d of the last %d calls failed (last: %s)",
                           self.label, self._cool_down, failures, calls, cause or "?")
        else:
            logger.warning("WAHA at %s: probe failed (%s); circuit open again for %.0f s",
                           self.label, cause or "?", self._cool_down)
        return "open"

    def _close(self) -> State:
        self._window.clear()
        self._cool_down = self.policy.cool_down
        self._transition("closed")
        logger.warning("WAHA at %s: probe succeeded; circuit closed", self.label)
        return "closed"

    def _transition(self, new: State) -> None:
        self.transitions[f"{self._state}->{new}"] += 1
        if new == "half_open":
            logger.info("WAHA at %s: circuit half-open, letting one probe call through", self.label)
        self._state = new
        self._generation += 1


_REGISTRY: dict[str, CircuitBreaker] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_breaker(base_url: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
    """The process-wide breaker of one WAHA server (keyed by base URL); created with `policy` on first use."""
    key = base_url.rstrip("/")
    with _REGISTRY_LOCK:
        breaker = _REGISTRY.get(key)
        if breaker is None:
            breaker = _REGISTRY[key] = CircuitBreaker(key, policy)
        return breaker
