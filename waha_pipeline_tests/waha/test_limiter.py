"""Pins the per-server limiter: the concurrency cap holds under many tasks and across threads with their own
event loops, cancelled waiters leak no slot, waiting never blocks the loop, the token bucket spaces request
starts (fake clock), and the process registry hands every client of a base URL the same limiter.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from waha_pipeline.waha.limiter import ServerLimiter, shared_limiter

from .conftest import FakeTime


async def _hold(limiter: ServerLimiter, peak: list[int], current: list[int], steps: int = 3) -> None:
    async with limiter.slot():
        current[0] += 1
        peak[0] = max(peak[0], current[0])
        for _ in range(steps):
            await asyncio.sleep(0)
        current[0] -= 1


def test_concurrency_cap_holds_under_many_tasks() -> None:
    limiter = ServerLimiter(concurrency=5)
    peak, current = [0], [0]

    async def main() -> None:
        await asyncio.gather(*(_hold(limiter, peak, current) for _ in range(300)))

    asyncio.run(main())
    assert peak[0] == 5 and limiter.peak == 5
    assert limiter.in_use == 0 and limiter.waiting == 0


def test_concurrency_cap_is_shared_across_threads_and_loops() -> None:
    limiter = ServerLimiter(concurrency=3)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    errors: list[BaseException] = []

    async def one() -> None:
        async with limiter.slot():
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            await asyncio.sleep(0.001)
            with lock:
                state["now"] -= 1

    async def many() -> None:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), timeout=20)

    def thread() -> None:
        try:
            asyncio.run(many())
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state["peak"] == 3 and limiter.in_use == 0 and limiter.waiting == 0


def test_cancelled_waiters_do_not_leak_slots() -> None:
    limiter = ServerLimiter(concurrency=2)

    async def main() -> None:
        release = asyncio.Event()

        async def holder() -> None:
            async with limiter.slot():
                await release.wait()

        holders = [asyncio.ensure_future(holder()) for _ in range(2)]
        waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(5)]
        await asyncio.sleep(0)
        assert limiter.in_use == 2 and limiter.waiting == 5
        for w in waiters[:4]:
            w.cancel()
        release.set()  # slots are handed to the waiters being cancelled: they must pass them on
        await asyncio.gather(*holders)
        await asyncio.gather(*waiters, return_exceptions=True)
        assert waiters[4].done() and not waiters[4].cancelled()
        limiter.release()  # the one waiter that got through
        assert limiter.in_use == 0 and limiter.waiting == 0
        async with limiter.slot(), limiter.slot():
            assert limiter.in_use == 2

    asyncio.run(main())


def test_waiting_does_not_block_the_loop() -> None:
    limiter = ServerLimiter(concurrency=1)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        release = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async with limiter.slot():
            waiter = asyncio.ensure_future(limiter.acquire())
            t = asyncio.ensure_future(ticker())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not waiter.done()
        await waiter
        limiter.release()
        release.set()
        await t

    asyncio.run(main())
    assert ticks >= 10


def test_raising_the_limit_wakes_waiters() -> None:
    limiter = ServerLimiter(concurrency=1)

    async def main() -> None:
        await limiter.acquire()
        second = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        assert not second.done()
        limiter.configure(concurrency=2, rate_per_second=None)
        await asyncio.wait_for(second, timeout=5)
        assert limiter.in_use == 2

    asyncio.run(main())


@pytest.mark.parametrize(("rate", "burst", "starts"), [
    (10.0, 1, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    (4.0, 1, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]),
    (10.0, 3, [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]),
], ids=["10/s", "4/s", "10/s-burst-3"])
def test_rate_limit_spaces_request_starts(rate: float, burst: int, starts: list[float]) -> None:
    time = FakeTime()
    limiter = ServerLimiter(concurrency=100, rate_per_second=rate, burst=burst, clock=time.clock, sleep=time.sleep)

    async def main() -> list[float]:
        seen = []
        for _ in range(len(starts)):
            await limiter.acquire()
            seen.append(time.now)
            limiter.release()
        return seen

    assert asyncio.run(main()) == pytest.approx(starts)


def test_concurrent_waiters_each_reserve_their_own_token() -> None:
    """12 concurrent requests at 40/s are told to wait 0, 1/40, ..., 11/40 s: each reserves the next token. The
    clock stands still while they wait, so the spacing comes from the reservations alone; waiters that all read
    the same free token would all be told the same wait."""
    waits: list[float] = []
    started: list[int] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    limiter = ServerLimiter(concurrency=12, rate_per_second=40.0, clock=lambda: 100.0, sleep=sleep)

    async def one(i: int) -> None:
        async with limiter.slot():
            started.append(i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(12)))

    asyncio.run(main())
    assert sorted(started) == list(range(12))
    assert sorted(waits) == pytest.approx([k / 40 for k in range(1, 12)])  # the first token was free


def test_idle_time_does_not_bank_tokens_beyond_burst() -> None:
    time = FakeTime()
    limiter = ServerLimiter(rate_per_second=10.0, burst=2, clock=time.clock, sleep=time.sleep)

    async def main() -> list[float]:
        await limiter.acquire()
        limiter.release()
        time.now += 60.0  # a long pause
        waits = []
        for _ in range(4):
            waits.append(await limiter.acquire())
            limiter.release()
        return waits

    assert asyncio.run(main()) == pytest.approx([0.0, 0.0, 0.1, 0.1])


def test_shared_limiter_is_one_per_base_url_and_reconfigurable() -> None:
    a = shared_limiter("http://limiter.test:1/", concurrency=4)
    assert shared_limiter("http://limiter.test:1", concurrency=4) is a
    assert shared_limiter("http://limiter.test:2", concurrency=4) is not a
    shared_limiter("http://limiter.test:1", concurrency=7, rate_per_second=3.0)
    assert (a.concurrency, a.rate_per_second) == (7, 3.0)


@pytest.mark.parametrize("kw", [{"concurrency": 0}, {"rate_per_second": 0.0}, {"burst": 0}])
def test_bad_limits_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ServerLimiter(**kw)  # type: ignore[arg-type]
