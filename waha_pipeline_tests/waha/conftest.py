"""Fixtures of the WAHA client tests: fake time, a scripted httpx.MockTransport and a client factory.

No fixture sleeps for real: retries sleep through `FakeTime.sleep`, which only advances `FakeTime.clock`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
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


# ---------------------------------------------------------------------------------------------------------------
# a WAHA store engine on loopback (real HTTP, same event loop: no thread, no sleep)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """A stored row of a chat; `hidden` rows (reactions, poll votes, protocol) are dropped after slicing."""

    id: str
    ts: int
    hidden: bool = False


class StoreServer:
    """Serves WAHA's sessions, chats and messages endpoints the way the store engines page: `limit`/`offset` slice
    the stored rows of the window first, unmappable rows are dropped afterwards (`result.filter(Boolean)`), so a
    page can come back empty while later offsets still hold messages.

    `status` None: the session does not exist. `missing_chats` answer 404 "Chat not found". `requests` records
    (path, params) of every request.
    """

    def __init__(self, session: str = "default", status: str | None = "WORKING") -> None:
        self.session = session
        self.status = status
        self.chats: dict[str, list[Row]] = {}
        self.missing_chats: set[str] = set()
        self.endless_chats = False  # /chats never ends: every page holds `limit` new chats
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.base_url = ""
        self._server: asyncio.Server | None = None

    def count(self, suffix: str) -> int:
        return sum(1 for path, _ in self.requests if path.endswith(suffix))

    async def __aenter__(self) -> StoreServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    target = httpx.URL(event.target.decode())
                    status, body = self._answer(target.path, dict(target.params))
                    payload = orjson.dumps(body)
                    writer.write(conn.send(h11.Response(status_code=status, headers=[
                        ("content-type", "application/json"), ("content-length", str(len(payload)))])))
                    writer.write(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()

    def _answer(self, path: str, params: dict[str, str]) -> tuple[int, Any]:
        self.requests.append((path, params))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "sessions"] and len(parts) == 3:
            if self.status is None:
                return 404, {"message": "Session not found", "error": "Not Found", "statusCode": 404}
            return 200, {"name": self.session, "status": self.status}
        if self.status in (None, "STOPPED"):
            return 404, {"message": f"We didn't find a session with name '{self.session}'.\nPlease start it first "
                                    f"by using POST /api/sessions/{self.session}/start request",
                         "error": "Not Found", "statusCode": 404}
        if self.status != "WORKING":
            return 422, {"error": "Session status is not as expected. Try again later or restart the session",
                         "session": self.session, "status": self.status, "expected": ["WORKING"]}
        limit, offset = int(params.get("limit", "10")), int(params.get("offset", "0"))
        if parts[2:] == ["chats"]:
            if self.endless_chats:
                return 200, [{"id": f"{n}@c.us"} for n in range(offset, offset + limit)]
            listed = [{"id": c, "conversationTimestamp": max((r.ts for r in rows), default=None)}
                      for c, rows in sorted(self.chats.items())]
            return 200, listed[offset: offset + limit]
        chat = parts[3]
        if chat in self.missing_chats:
            return 404, {"message": f"Chat not found: {chat}", "error": "Not Found", "statusCode": 404}
        gte = int(params["filter.timestamp.gte"]) if "filter.timestamp.gte" in params else None
        lte = int(params["filter.timestamp.lte"]) if "filter.timestamp.lte" in params else None
        rows = [r for r in self.chats.get(chat, []) if (gte is None or r.ts >= gte) and (lte is None or r.ts <= lte)]
        rows.sort(key=lambda r: r.ts, reverse=params.get("sortOrder") == "desc")
        page = rows[offset: offset + limit]
        return 200, [{"id": r.id, "timestamp": r.ts, "fromMe": False, "body": r.id} for r in page if not r.hidden]


@pytest.fixture
async def store_server() -> Any:
    async with StoreServer() as server:
        yield server
