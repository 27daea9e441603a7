"""Async WAHA client: one WahaClient per WAHA server, one method per WAHA API call.

The parts: request_loop.py sends every request (retry, waiting for the session, counting, the circuit breaker and
the per-server limiter), paging.py pages lists and chats to their end, connections.py holds the httpx transports and
body_limit.py the response size limit. Knows nothing about the CRM or Dagster.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from waha_pipeline.waha.body_limit import DEFAULT_MAX_BODY
from waha_pipeline.waha.breaker import BreakerPolicy, CircuitBreaker, shared_breaker
from waha_pipeline.waha.connections import waha_transports
from waha_pipeline.waha.limiter import ServerLimiter, shared_limiter
from waha_pipeline.waha.models import ChatRead, SessionInfo, chat_id_of, parse_lid_mapping, parse_session
from waha_pipeline.waha.paging import (
    MAX_CHATS,
    MAX_PROBE_ROWS,
    MIN_MESSAGE_PAGE,
    PROBE_EMPTY_PAGES,
    page_all,
    read_pages,
)
from waha_pipeline.waha.request_loop import KINDS, Kind, RequestLoop, WahaTimeouts, expect_list, parse_body
from waha_pipeline.waha.retry import RetryPolicy
from waha_pipeline.waha.stats import TALLY, Counters, WahaStats

__all__ = ["KINDS", "ChatRead", "Kind", "WahaClient", "WahaStats", "WahaTimeouts"]

NEWEST_FIRST_ENGINES = frozenset({"WEBJS", "WPP"})  # browser engines: pages newest first whatever sortOrder asks

T = TypeVar("T")


class WahaClient:
    """Client of one WAHA server. Use as `async with WahaClient(url, api_key) as waha: ...`.

    `concurrency` and `rate_per_second` configure the process-wide limiter of this server (shared with every other
    client of the same base URL, in any thread); `limiter` and `breaker` replace the shared ones (tests, or a
    deliberately separate budget). Everything time-related reads `clock` and waits through `sleep`.
    `max_response_bytes` bounds every response body (WAHA_MAX_RESPONSE_MB); `transport` replaces the client's
    pools of httpx's stock transport (connections.py).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        concurrency: int = 16,
        rate_per_second: float | None = None,
        timeouts: WahaTimeouts | None = None,
        retry: RetryPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
        session_wait_timeout: float = 30.0,
        session_poll_interval: float = 1.0,
        min_page_size: int = MIN_MESSAGE_PAGE,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: ServerLimiter | None = None,
        breaker: CircuitBreaker | None = None,
        max_chats: int = MAX_CHATS,
        probe_empty_pages: int = PROBE_EMPTY_PAGES,
        max_probe_rows: int = MAX_PROBE_ROWS,
        max_response_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_chats < 1 or probe_empty_pages < 0:
            raise ValueError("max_chats must be >= 1 and probe_empty_pages >= 0")
        self.max_chats = max_chats
        self.probe_empty_pages = probe_empty_pages
        self.max_probe_rows = max_probe_rows
        self.min_page_size = max(1, min_page_size)
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-Api-Key"] = api_key
        url = httpx.URL(base_url)
        auth: httpx.Auth | None = None
        secrets = [s for s in (api_key, url.password) if s and len(s) >= 4]
        if url.userinfo:  # basic auth of a proxy: sent as a header, kept out of the URL that httpx logs
            auth = httpx.BasicAuth(url.username, url.password)
            url = url.copy_with(username=None, password=None)
        self.base_url = str(url).rstrip("/")
        timeouts = timeouts or WahaTimeouts()
        transports = [transport] if transport else waha_transports(concurrency)
        clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=timeouts.for_kind("sessions"),
                transport=each,
                auth=auth,
                follow_redirects=False,
            )
            for each in transports
        ]
        self._loop = RequestLoop(
            clients,
            timeouts=timeouts,
            retry=retry or RetryPolicy(),
            breaker=breaker or shared_breaker(self.base_url, breaker_policy),
            limiter=limiter or shared_limiter(self.base_url, concurrency=concurrency, rate_per_second=rate_per_second),
            session_wait_timeout=session_wait_timeout,
            session_poll_interval=session_poll_interval,
            max_response_bytes=max_response_bytes,
            secrets=secrets,
            sleep=sleep,
            rng=rng or random.Random(),
            clock=clock,
        )
        self._newest_first: dict[str, bool] = {}

    async def __aenter__(self) -> WahaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._loop.aclose()

    # the request loop's settings and parts, read (and in tests observed) through the client
    @property
    def timeouts(self) -> WahaTimeouts:
        return self._loop.timeouts

    @property
    def retry(self) -> RetryPolicy:
        return self._loop.retry

    @property
    def breaker(self) -> CircuitBreaker:
        return self._loop.breaker

    @property
    def limiter(self) -> ServerLimiter:
        return self._loop.limiter

    @property
    def session_wait_timeout(self) -> float:
        return self._loop.session_wait_timeout

    @property
    def session_poll_interval(self) -> float:
        return self._loop.session_poll_interval

    @property
    def max_response_bytes(self) -> int:
        return self._loop.max_response_bytes

    async def measured(self, work: Awaitable[T]) -> tuple[T, WahaStats]:
        """Await `work` and return the WahaStats of what it did (requests, retries, waits, breaker events,
        latency), even while other work shares the client. The tally lives in a context variable, which the
        tasks `work` starts inherit.
        """
        tally = Counters()
        token = TALLY.set(tally)
        try:
            result = await work
        finally:
            TALLY.reset(token)
        return result, tally.snapshot()

    def stats(self) -> WahaStats:
        """Everything this client did so far."""
        return self._loop.stats.total.snapshot()

    # -- sessions ---------------------------------------------------------------------------------------------

    async def get_session(self, name: str) -> SessionInfo:
        """`GET /api/sessions/{name}`; raises WahaSessionNotFound on 404."""
        return await self._loop.session(name)

    async def list_sessions(self, all: bool = True) -> list[SessionInfo]:  # noqa: A002 - WAHA's parameter name
        """`GET /api/sessions?all=`; `all=True` includes STOPPED sessions."""
        path = "/api/sessions"
        data = expect_list(
            await self._loop.request("sessions", "GET", path, params={"all": "true" if all else "false"}), "GET", path
        )
        return [parse_body(parse_session, item, "GET", path) for item in data]

    # -- chats and lids ---------------------------------------------------------------------------------------

    async def list_chats(self, session: str, page_size: int = 2000) -> list[dict[str, Any]]:
        """Every chat of the session, raw, sorted by id, deduplicated by id (first wins).

        Offset paging until an EMPTY page: a short page is not the end (engines drop items from pages). A chat is
        a few hundred bytes, so a page of 2,000 keeps the requests (each a WAHA round trip before any chunk can
        start) to two for most channels. More than `max_chats` chats is a permanent error: a list that never
        ends must not grow the plan without bound.
        """
        path = f"/api/{quote(session, safe='')}/chats"
        base = {"sortBy": "id", "sortOrder": "asc"}
        return await page_all(self._loop, "chats", path, base, session, page_size, chat_id_of,
                              max_items=self.max_chats)

    async def lid_map(self, session: str, page_size: int = 1000) -> dict[str, str | None]:
        """WAHA's lid -> phone mapping as digits -> digits (None when WAHA does not know the phone)."""
        path = f"/api/{quote(session, safe='')}/lids"

        def lid_key(item: Any) -> str | None:
            mapping = parse_lid_mapping(item)
            return mapping.lid if mapping else None

        result: dict[str, str | None] = {}
        for item in await page_all(self._loop, "lids", path, {}, session, page_size, lid_key):
            mapping = parse_lid_mapping(item)
            if mapping is not None and result.get(mapping.lid) is None:
                result[mapping.lid] = mapping.phone
        return result

    # -- messages ---------------------------------------------------------------------------------------------

    async def fetch_messages(
        self, session: str, chat_id: str, *, gte: int | None, lte: int, page_size: int = 500,
        encode: Callable[[Any], Any] | None = None, last_at: int | None = None,
    ) -> list[Any]:
        """The items of `read_chat`, for callers that do not track how far the read is proven."""
        read = await self.read_chat(session, chat_id, gte=gte, lte=lte, page_size=page_size, encode=encode,
                                    last_at=last_at)
        return read.items

    async def newest_first(self, session: str) -> bool:
        """Whether the session's engine pages messages newest first whatever `sortOrder` asks (WEBJS, and the
        other browser engine WPP): then a read has no end the chat list's last-message time can prove. Asked
        once per session and client."""
        if session not in self._newest_first:
            engine = (await self.get_session(session)).engine or ""
            self._newest_first[session] = engine.upper() in NEWEST_FIRST_ENGINES
        return self._newest_first[session]

    async def read_chat(
        self, session: str, chat_id: str, *, gte: int | None, lte: int, page_size: int = 500,
        encode: Callable[[Any], Any] | None = None, last_at: int | None = None, newest_first: bool = False,
    ) -> ChatRead:
        """Every message of one chat with `gte <= timestamp <= lte` (gte None = no lower bound), oldest first, and
        how far the read is proven complete (`ChatRead.proven_to`).

        `last_at` is the chat's last-message time from the chat list (None when unknown): the evidence that lets
        an empty page end the chat at once (see `paging.read_pages`). Raw dicts, unchanged, or `encode(item)` of
        each as its page arrives (a parsed page is several times the size of its text). Deduplicated by `id` (first
        wins); items without a usable id are kept in order so the domain can reject them. A page that times out
        is re-requested at the same offset with half the limit (down to `min_page_size`), and the smaller limit
        is kept for the rest of the chat. `newest_first`: the server is known to ignore `sortOrder=asc`.
        """
        path = f"/api/{quote(session, safe='')}/chats/{quote(chat_id, safe='')}/messages"
        base: dict[str, str] = {"downloadMedia": "false", "sortBy": "timestamp", "sortOrder": "asc"}
        if gte is not None:
            base["filter.timestamp.gte"] = str(int(gte))
        base["filter.timestamp.lte"] = str(int(lte))
        return await read_pages(self._loop, path, base, session, chat_id, page_size, gte=gte, lte=lte,
                                last_at=last_at, encode=encode, newest_first=newest_first,
                                min_page_size=self.min_page_size, probe_empty_pages=self.probe_empty_pages,
                                max_probe_rows=self.max_probe_rows)

    async def fetch_many(
        self, session: str, chat_ids: Iterable[str], *, gte: int | None, lte: int, page_size: int = 500,
        encode: Callable[[Any], Any] | None = None, last_at: Mapping[str, int | None] | None = None,
    ) -> dict[str, list[Any]]:
        """The items of `read_many`."""
        reads = await self.read_many(session, chat_ids, gte=gte, lte=lte, page_size=page_size, encode=encode,
                                     last_at=last_at)
        return {chat_id: read.items for chat_id, read in reads.items()}

    async def read_many(
        self, session: str, chat_ids: Iterable[str], *, gte: int | None, lte: int, page_size: int = 500,
        encode: Callable[[Any], Any] | None = None, last_at: Mapping[str, int | None] | None = None,
        newest_first: bool = False,
    ) -> dict[str, ChatRead]:
        """`read_chat` for several chats concurrently (requests bounded by the server's limiter); `last_at` maps
        a chat to its last-message time from the chat list (missing = unknown).

        The first failure cancels the other chats and is raised; the result is keyed in input order.
        """
        ids = list(dict.fromkeys(chat_ids))
        known = last_at or {}
        tasks = [
            asyncio.ensure_future(self.read_chat(session, c, gte=gte, lte=lte, page_size=page_size, encode=encode,
                                                 last_at=known.get(c), newest_first=newest_first))
            for c in ids
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return dict(zip(ids, results))
