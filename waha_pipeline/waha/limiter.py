"""Per-WAHA-server limiter shared by everything in the process: at most N requests in flight and at most R starts
per second (token bucket with `burst` tokens).

Why not asyncio.Semaphore or aiolimiter: both bind to one event loop, and Dagster may run several runs (each with
its own loop) in threads of one process; WAHA's capacity is per server, not per loop. State here sits behind a
threading.Lock held only for O(1) bookkeeping; waiting is always `await` (a future woken with
call_soon_threadsafe, or the injected async sleep), so no loop is ever blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from waha_pipeline.waha.breaker import server_label

logger = logging.getLogger(__name__)

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _grant(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ServerLimiter:
    """Concurrency cap + request rate of one WAHA server. Use `async with limiter.slot(): send()`."""

    def __init__(
        self,
        name: str = "",
        *,
        concurrency: int = 16,
        rate_per_second: float | None = None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._in_use = 0
        self.peak = 0  # most slots ever in use at once
        self._tat = 0.0  # GCRA "theoretical arrival time" of the next token
        self.concurrency = 1
        self.rate_per_second: float | None = None
        self.burst = 1
        self.configure(concurrency=concurrency, rate_per_second=rate_per_second, burst=burst)

    def configure(self, *, concurrency: int, rate_per_second: float | None, burst: int = 1) -> None:
        """Change the limits; a lower concurrency takes effect as in-flight requests finish."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if rate_per_second is not None and rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0 or None (unlimited)")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        with self._lock:
            self.concurrency, self.rate_per_second, self.burst = concurrency, rate_per_second, burst
            self._wake_locked()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one concurrency slot (and one rate token) for the body; yields the seconds spent waiting."""
        waited = await self.acquire()
        try:
            yield waited
        finally:
            self.release()

    async def acquire(self) -> float:
        """Take a slot, then a rate token; returns the seconds waited (by this limiter's clock)."""
        started = self._clock()
        await self._take_slot()
        try:
            delay = self._reserve_token()
            if delay > 0:
                await self._sleep(delay)
        except BaseException:
            self.release()
            raise
        return max(0.0, self._clock() - started)

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._wake_locked()

    # -- internals --------------------------------------------------------------------------------------------

    async def _take_slot(self) -> None:
        with self._lock:
            if self._in_use < self.concurrency and not self._waiters:
                self._in_use += 1
                self.peak = max(self.peak, self._in_use)
                return
            loop = asyncio.get_running_loop()
            waiter: _Waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    granted = False
                except ValueError:
                    granted = True  # a slot was handed to us while we were being cancelled: pass it on
            if granted:
                self.release()
            raise

    def _wake_locked(self) -> None:
        """Hand free slots to waiters, oldest first, each on its own loop (lock held)."""
        while self._waiters and self._in_use < self.concurrency:
            loop, fut = self._waiters.popleft()
            self._in_use += 1
            self.peak = max(self.peak, self._in_use)
            try:
                loop.call_soon_threadsafe(_grant, fut)
            except RuntimeError:  # that waiter's loop is closed: it will never run, take the slot back
                self._in_use -= 1

    def _reserve_token(self) -> float:
        """GCRA: reserve the next token and return how long to wait for it (0 when unlimited or available)."""
        with self._lock:
            if self.rate_per_second is None:
                return 0.0
            interval = 1.0 / self.rate_per_second
            now = self._clock()
            tat = max(self._tat, now)
            delay = max(0.0, tat - (self.burst - 1) * interval - now)
            self._tat = tat + interval
            return delay


_REGISTRY: dict[str, ServerLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(base_url: str, *, concurrency: int, rate_per_second: float | None = None,
                   burst: int = 1) -> ServerLimiter:
    """The process-wide limiter of one WAHA server (keyed by base URL).

    Every client of that server shares it, whatever its thread or event loop; a client that asks for other
    limits reconfigures it (the latest configuration wins, and the change is logged).
    """
    key = base_url.rstrip("/")
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = ServerLimiter(key, concurrency=concurrency, rate_per_second=rate_per_second,
                                                     burst=burst)
            return limiter
    if (limiter.concurrency, limiter.rate_per_second, limiter.burst) != (concurrency, rate_per_second, burst):
        logger.info("WAHA limiter for %s: concurrency %d -> %d, rate %s -> %s per second", server_label(key),
                    limiter.concurrency, concurrency, limiter.rate_per_second, rate_per_second)
        limiter.configure(concurrency=concurrency, rate_per_second=rate_per_second, burst=burst)
    return limiter
