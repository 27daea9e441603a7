"""Counters of the WAHA client: `WahaStats` snapshots, the per-scope tally behind `WahaClient.measured`, and a
fixed-bucket latency histogram.

Why a fixed-bucket histogram and not a reservoir: bucket counts subtract exactly, so `after - before` still gives a
chunk's own p50/p95, and its memory is constant however many requests a long import makes.
"""

from __future__ import annotations

import contextvars
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Bucket i holds latencies in (LATENCY_BOUNDS[i-1], LATENCY_BOUNDS[i]]; the last bucket holds everything slower.
# Bounds grow by 2**(1/4) (~19%) from 1 ms to ~9 min, so a reported percentile is within ~10% of the truth.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.001 * 2 ** (i / 4) for i in range(77))
N_BUCKETS = len(LATENCY_BOUNDS) + 1


def latency_bucket(seconds: float) -> int:
    """The bucket of one latency (negative or zero latencies go to bucket 0)."""
    if seconds <= LATENCY_BOUNDS[0]:
        return 0
    index = math.ceil(4 * math.log2(seconds / LATENCY_BOUNDS[0]) - 1e-9)
    return min(index, N_BUCKETS - 1)


def histogram_percentile(buckets: tuple[int, ...], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram, as the geometric middle of its bucket; None when empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            if index == 0:
                return LATENCY_BOUNDS[0]
            if index >= len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            return math.sqrt(LATENCY_BOUNDS[index - 1] * LATENCY_BOUNDS[index])
    return LATENCY_BOUNDS[-1]  # pragma: no cover - unreachable when counts are non-negative


@dataclass(frozen=True)
class WahaStats:
    """A snapshot of the client's counters; `after - before` gives one chunk's share.

    requests: HTTP attempts sent (every retry and every session poll counts); by_kind splits them by endpoint.
    retries: attempts repeated, by cause ("429", "408", "5xx", "timeout", "connect", "transport", "session").
    wait_429_seconds: time slept because of 429 (Retry-After or backoff); backoff_seconds: all retry sleeps.
    session_wait_seconds: time requests spent waiting for a session to become WORKING after a 422.
    page_shrinks: message pages re-requested with a smaller limit after a timeout.
    limiter_wait_seconds: time requests waited for a concurrency slot or a rate token of the per-server limiter.
    breaker_opened / breaker_closed: circuit-breaker transitions caused by this client's calls (open, probe closed).
    breaker_rejections: calls refused because the breaker was open (nothing was sent for them).
    latency_buckets: histogram (see LATENCY_BOUNDS) of successful attempts' latency; read it via latency_p50/p95.
    Seconds are summed over concurrent requests, so they can exceed wall time.
    """

    requests: int = 0
    requests_by_kind: Mapping[str, int] = field(default_factory=dict)
    retries_by_cause: Mapping[str, int] = field(default_factory=dict)
    wait_429_seconds: float = 0.0
    backoff_seconds: float = 0.0
    session_wait_seconds: float = 0.0
    page_shrinks: int = 0
    limiter_wait_seconds: float = 0.0
    breaker_opened: int = 0
    breaker_closed: int = 0
    breaker_rejections: int = 0
    latency_buckets: tuple[int, ...] = ()

    @property
    def retries(self) -> int:
        return sum(self.retries_by_cause.values())

    @property
    def latency_count(self) -> int:
        """Successful attempts whose latency was recorded."""
        return sum(self.latency_buckets)

    @property
    def latency_p50(self) -> float | None:
        """Median latency of successful attempts in seconds (±10%), None without any."""
        return histogram_percentile(self.latency_buckets, 0.50)

    @property
    def latency_p95(self) -> float | None:
        """95th percentile latency of successful attempts in seconds (±10%), None without any."""
        return histogram_percentile(self.latency_buckets, 0.95)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-friendly summary (for logs and materialization metadata); latencies in milliseconds."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 1)

        return {
            "requests": self.requests,
            "retries": self.retries,
            "retries_by_cause": dict(self.retries_by_cause),
            "wait_429_seconds": round(self.wait_429_seconds, 3),
            "backoff_seconds": round(self.backoff_seconds, 3),
            "session_wait_seconds": round(self.session_wait_seconds, 3),
            "limiter_wait_seconds": round(self.limiter_wait_seconds, 3),
            "page_shrinks": self.page_shrinks,
            "breaker_opened": self.breaker_opened,
            "breaker_closed": self.breaker_closed,
            "breaker_rejections": self.breaker_rejections,
            "latency_p50_ms": ms(self.latency_p50),
            "latency_p95_ms": ms(self.latency_p95),
        }

    def __sub__(self, other: WahaStats) -> WahaStats:
        def diff(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}

        def diff_buckets(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
            if not b:
                return a
            if not a:
                return tuple(-x for x in b)
            return tuple(x - y for x, y in zip(a, b, strict=True))

        return WahaStats(
            requests=self.requests - other.requests,
            requests_by_kind=diff(self.requests_by_kind, other.requests_by_kind),
            retries_by_cause=diff(self.retries_by_cause, other.retries_by_cause),
            latency_buckets=diff_buckets(self.latency_buckets, other.latency_buckets),
            **{name: getattr(self, name) - getattr(other, name) for name in SCALARS},
        )


# The WahaStats fields that are plain sums: Counters adds to them by these names.
SCALARS = ("wait_429_seconds", "backoff_seconds", "session_wait_seconds", "page_shrinks", "limiter_wait_seconds",
           "breaker_opened", "breaker_closed", "breaker_rejections")


@dataclass
class Counters:
    """Mutable counters behind a WahaStats snapshot (one per client, one per `measured` scope)."""

    requests: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    scalars: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SCALARS, 0))
    latency: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def snapshot(self) -> WahaStats:
        return WahaStats(
            requests=sum(self.requests.values()),
            requests_by_kind=dict(self.requests),
            retries_by_cause=dict(self.retries),
            latency_buckets=tuple(self.latency),
            **self.scalars,  # type: ignore[arg-type]
        )


TALLY: contextvars.ContextVar[Counters | None] = contextvars.ContextVar("waha_request_tally", default=None)


class Recorder:
    """Applies each count to the client's own counters and to the current `measured` scope, if any."""

    def __init__(self) -> None:
        self.total = Counters()

    def _targets(self) -> tuple[Counters, ...]:
        scope = TALLY.get()
        return (self.total,) if scope is None else (self.total, scope)

    def request(self, kind: str) -> None:
        for c in self._targets():
            c.requests[kind] += 1

    def retry(self, cause: str) -> None:
        for c in self._targets():
            c.retries[cause] += 1

    def add(self, name: str, amount: float | int = 1) -> None:
        """Add to one of SCALARS."""
        for c in self._targets():
            c.scalars[name] += amount

    def latency(self, seconds: float) -> None:
        bucket = latency_bucket(seconds)
        for c in self._targets():
            c.latency[bucket] += 1
