"""Fixtures of the WAHA client tests: fake time, a scripted httpx.MockTransport and a client factory.

No fixture sleeps for real: retries sleep through `FakeTime.sleep`, which only advances `FakeTime.clock`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from waha_pipeline.waha.breaker import CircuitBreaker
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.limiter import ServerLimiter
from waha_pipeline.waha.retry import RetryPolicy

BASE_URL = "http://waha.test"
SECRET = "sk-test-0123456789abcdef"  # the API key; must never appear in an error message


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reply(status: int = 200, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    """A scripted step: respond with `status` and a JSON `body` (or `raw` bytes)."""
    content = raw if raw is not None else orjson.dumps(body)

    def step(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers or {})

    return step


def fail_with(exc_type: type[httpx.TransportError], text: str = "boom") -> Callable[[httpx.Request], httpx.Response]:
    """A scripted step raising a transport error (timeout, refused connection...)."""

    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return step


class Script:
    """Serves scripted steps per route (`"/api/..."` path or `"*"`), in order, and records every request.

    A route whose script is used up repeats its last step; an unscripted route is an assertion error.
    """

    def __init__(self, routes: dict[str, list[Callable[[httpx.Request], httpx.Response]]]) -> None:
        self.routes = {path: list(steps) for path, steps in routes.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        steps = self.routes.get(path) or self.routes.get("*")
        assert steps, f"unscripted request {request.method} {request.url}"
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        return step(request)

    def params(self, path: str | None = None) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests if path is None or r.url.path == path]


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(fake_time: FakeTime) -> Iterator[Callable[..., WahaClient]]:
    """`make_client(handler, **overrides)`: a WahaClient on an httpx.MockTransport with fake time, key SECRET.

    Each client gets its own breaker and limiter on fake time (the process-wide ones would carry state from one
    test to the next).
    """

    def build(handler: Callable[[httpx.Request], Any], **kw: Any) -> WahaClient:
        options: dict[str, Any] = {
            "api_key": SECRET,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
            "rng": random.Random(7),
            "retry": RetryPolicy(),
            "breaker": CircuitBreaker(BASE_URL, kw.pop("breaker_policy", None), clock=fake_time.clock),
            "limiter": ServerLimiter(BASE_URL, concurrency=kw.get("concurrency", 16),
                                     rate_per_second=kw.pop("rate_per_second", None),
                                     clock=fake_time.clock, sleep=fake_time.sleep),
        }
        options.update(kw)
        return WahaClient(BASE_URL, transport=httpx.MockTransport(handler), **options)

    yield build
