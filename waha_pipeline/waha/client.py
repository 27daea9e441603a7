"""Async WAHA client: one httpx.AsyncClient per WAHA server, one method per endpoint, paging and dedup.

Every request goes through `WahaClient._request`, the single place for retry, waiting for the session, counting,
and (later) the circuit breaker and rate limiter. Knows nothing about the CRM or Dagster.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson

from waha_pipeline.errors import (
    WahaPermanentError,
    WahaSessionNotFound,
    WahaSessionNotReady,
    WahaTransientError,
)
from waha_pipeline.waha.models import (
    SessionInfo,
    chat_id_of,
    message_id_of,
    parse_lid_mapping,
    parse_session,
)
from waha_pipeline.waha.retry import RetryBudget, RetryPolicy, classify, parse_retry_after, retry_cause

logger = logging.getLogger(__name__)

Kind = Literal["sessions", "chats", "messages", "lids"]
KINDS: tuple[Kind, ...] = ("sessions", "chats", "messages", "lids")

BODY_SNIPPET = 200
MIN_MESSAGE_PAGE = 50
STALE_PAGES_LIMIT = 3  # consecutive non-empty pages without a new item: the server ignores `offset`


# ---------------------------------------------------------------------------------------------------------------
# configuration and counters
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WahaTimeouts:
    """Per-call-kind timeouts in seconds. A message page may be slow (WEBJS loads history in a browser page)."""

    connect: float = 5.0
    write: float = 10.0
    pool: float = 30.0
    sessions_read: float = 15.0
    list_read: float = 60.0  # chats and lids pages
    messages_read: float = 90.0

    def for_kind(self, kind: Kind) -> httpx.Timeout:
        read = {"sessions": self.sessions_read, "messages": self.messages_read}.get(kind, self.list_read)
        return httpx.Timeout(connect=self.connect, read=read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class WahaStats:
    """A snapshot of the client's counters; `after - before` gives one chunk's share.

    requests: HTTP attempts sent (every retry and every session poll counts); by_kind splits them by endpoint.
    retries: attempts repeated, by cause ("429", "408", "5xx", "timeout", "connect", "transport", "session").
    wait_429_seconds: time slept because of 429 (Retry-After or backoff); backoff_seconds: all retry sleeps.
    session_wait_seconds: time spent waiting for a session to become WORKING after a 422.
    page_shrinks: message pages re-requested with a smaller limit after a timeout.
    """

    requests: int = 0
    requests_by_kind: Mapping[str, int] = field(default_factory=dict)
    retries_by_cause: Mapping[str, int] = field(default_factory=dict)
    wait_429_seconds: float = 0.0
    backoff_seconds: float = 0.0
    session_wait_seconds: float = 0.0
    page_shrinks: int = 0

    @property
    def retries(self) -> int:
        return sum(self.retries_by_cause.values())

    def __sub__(self, other: WahaStats) -> WahaStats:
        def diff(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}

        return WahaStats(
            requests=self.requests - other.requests,
            requests_by_kind=diff(self.requests_by_kind, other.requests_by_kind),
            retries_by_cause=diff(self.retries_by_cause, other.retries_by_cause),
            wait_429_seconds=self.wait_429_seconds - other.wait_429_seconds,
            backoff_seconds=self.backoff_seconds - other.backoff_seconds,
            session_wait_seconds=self.session_wait_seconds - other.session_wait_seconds,
            page_shrinks=self.page_shrinks - other.page_shrinks,
        )


@dataclass
class _Tally:
    requests: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)


_TALLY: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar("waha_request_tally", default=None)
T = TypeVar("T")


class _PageTimeout(Exception):
    """Internal: a message page timed out and the caller asked to shrink the page instead of retrying."""


# ---------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------


class WahaClient:
    """Client of one WAHA server. Use as `async with WahaClient(url, api_key) as waha: ...`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        concurrency: int = 16,
        timeouts: WahaTimeouts | None = None,
        retry: RetryPolicy | None = None,
        session_wait_timeout: float = 30.0,
        session_poll_interval: float = 1.0,
        min_page_size: int = MIN_MESSAGE_PAGE,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-Api-Key"] = api_key
        self._api_key = api_key or None
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or WahaTimeouts()
        self.retry = retry or RetryPolicy()
        self.session_wait_timeout = session_wait_timeout
        self.session_poll_interval = session_poll_interval
        self.min_page_size = max(1, min_page_size)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeouts.for_kind("sessions"),
            limits=httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30.0
            ),
            transport=transport,
            follow_redirects=False,
        )
        self._requests: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._wait_429 = 0.0
        self._backoff = 0.0
        self._session_wait = 0.0
        self._page_shrinks = 0

    async def __aenter__(self) -> WahaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def measured(self, work: Awaitable[T]) -> tuple[T, WahaStats]:
        """Await `work` and return the requests and retries it made, even while other work shares the client.

        The tally lives in a context variable, which the tasks `work` starts inherit.
        """
        tally = _Tally()
        token = _TALLY.set(tally)
        try:
            result = await work
        finally:
            _TALLY.reset(token)
        return result, WahaStats(
            requests=sum(tally.requests.values()),
            requests_by_kind=dict(tally.requests),
            retries_by_cause=dict(tally.retries),
        )

    def _count_request(self, kind: str) -> None:
        self._requests[kind] += 1
        tally = _TALLY.get()
        if tally is not None:
            tally.requests[kind] += 1

    def _count_retry(self, cause: str) -> None:
        self._retries[cause] += 1
        tally = _TALLY.get()
        if tally is not None:
            tally.retries[cause] += 1

    def stats(self) -> WahaStats:
        return WahaStats(
            requests=sum(self._requests.values()),
            requests_by_kind=dict(self._requests),
            retries_by_cause=dict(self._retries),
            wait_429_seconds=self._wait_429,
            backoff_seconds=self._backoff,
            session_wait_seconds=self._session_wait,
            page_shrinks=self._page_shrinks,
        )

    # -- sessions ---------------------------------------------------------------------------------------------

    async def get_session(self, name: str) -> SessionInfo:
        """`GET /api/sessions/{name}`; raises WahaSessionNotFound on 404."""
        path = f"/api/sessions/{quote(name, safe='')}"
        data = await self._request("sessions", "GET", path, session=name, wait_for_session=False)
        return self._parse(parse_session, data, "GET", path)

    async def list_sessions(self, all: bool = True) -> list[SessionInfo]:  # noqa: A002 - WAHA's parameter name
        """`GET /api/sessions?all=`; `all=True` includes STOPPED sessions."""
        path = "/api/sessions"
        data = self._expect_list(
            await self._request("sessions", "GET", path, params={"all": "true" if all else "false"}), "GET", path
        )
        return [self._parse(parse_session, item, "GET", path) for item in data]

    # -- chats and lids ---------------------------------------------------------------------------------------

    async def list_chats(self, session: str, page_size: int = 500) -> list[dict[str, Any]]:
        """Every chat of the session, raw, sorted by id, deduplicated by id (first wins).

        Offset paging until an EMPTY page: a short page is not the end (engines drop items from pages).
        """
        path = f"/api/{quote(session, safe='')}/chats"
        base = {"sortBy": "id", "sortOrder": "asc"}
        return await self._page_all("chats", path, base, session, page_size, chat_id_of)

    async def lid_map(self, session: str, page_size: int = 1000) -> dict[str, str | None]:
        """WAHA's lid -> phone mapping as digits -> digits (None when WAHA does not know the phone)."""
        path = f"/api/{quote(session, safe='')}/lids"

        def lid_key(item: Any) -> str | None:
            mapping = parse_lid_mapping(item)
            return mapping.lid if mapping else None

        result: dict[str, str | None] = {}
        for item in await self._page_all("lids", path, {}, session, page_size, lid_key):
            mapping = parse_lid_mapping(item)
            if mapping is not None and result.get(mapping.lid) is None:
                result[mapping.lid] = mapping.phone
        return result

    # -- messages ---------------------------------------------------------------------------------------------

    async def fetch_messages(
        self, session: str, chat_id: str, *, gte: int | None, lte: int, page_size: int = 500
    ) -> list[dict[str, Any]]:
        """Every message of one chat with `gte <= timestamp <= lte` (gte None = no lower bound), oldest first.

        Raw dicts, unchanged. Deduplicated by `id` (first wins); items without a usable id are kept in order so
        the domain can reject them. A page that times out is re-requested at the same offset with half the
        limit (down to `min_page_size`), and the smaller limit is kept for the rest of the chat.
        """
        path = f"/api/{quote(session, safe='')}/chats/{quote(chat_id, safe='')}/messages"
        base: dict[str, str] = {"downloadMedia": "false", "sortBy": "timestamp", "sortOrder": "asc"}
        if gte is not None:
            base["filter.timestamp.gte"] = str(int(gte))
        base["filter.timestamp.lte"] = str(int(lte))
        return await self._page_all("messages", path, base, session, page_size, message_id_of, shrink=True)

    async def fetch_many(
        self, session: str, chat_ids: Iterable[str], *, gte: int | None, lte: int, page_size: int = 500
    ) -> dict[str, list[dict[str, Any]]]:
        """`fetch_messages` for several chats concurrently (requests bounded by the client's semaphore).

        The first failure cancels the other chats and is raised; the result is keyed in input order.
        """
        ids = list(dict.fromkeys(chat_ids))
        tasks = [
            asyncio.ensure_future(self.fetch_messages(session, c, gte=gte, lte=lte, page_size=page_size))
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

    # -- paging -----------------------------------------------------------------------------------------------

    async def _page_all(
        self,
        kind: Kind,
        path: str,
        base: Mapping[str, str],
        session: str,
        page_size: int,
        key: Callable[[Any], str | None],
        *,
        shrink: bool = False,
    ) -> list[Any]:
        """Offset paging: `offset += limit` until an empty page; dedupe by `key` keeping the first occurrence."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        limit, offset, stale = page_size, 0, 0
        seen: set[str] = set()
        items: list[Any] = []
        while True:
            params = {**base, "limit": str(limit), "offset": str(offset)}
            can_shrink = shrink and limit > self.min_page_size
            try:
                data = await self._request(kind, "GET", path, params=params, session=session, shrink_on_timeout=can_shrink)
            except _PageTimeout:
                limit = max(self.min_page_size, limit // 2)
                self._page_shrinks += 1
                logger.info("WAHA GET %s timed out at offset %d; retrying the page with limit %d", path, offset, limit)
                continue
            page = self._expect_list(data, "GET", path)
            if not page:
                return items
            added = 0
            for item in page:
                item_key = key(item)
                if item_key is None:
                    items.append(item)
                    added += 1
                elif item_key not in seen:
                    seen.add(item_key)
                    items.append(item)
                    added += 1
            stale = stale + 1 if added == 0 else 0
            if stale >= STALE_PAGES_LIMIT:
                raise WahaPermanentError(
                    f"WAHA GET {path}: {stale} pages in a row brought nothing new at offset {offset}; "
                    "the server seems to ignore offset paging",
                    method="GET",
                    path=path,
                )
            offset += limit

    # -- the one request path ---------------------------------------------------------------------------------

    async def _request(
        self,
        kind: Kind,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        *,
        session: str | None = None,
        wait_for_session: bool = True,
        shrink_on_timeout: bool = False,
    ) -> Any:
        """Send one logical request and return its parsed JSON body.

        Retries transient failures (capped in attempts and time), waits for the session on a 422 "session status
        is not as expected" (bounded), maps the rest to the error tree. `session` marks a session-scoped path: a
        404 there is WahaSessionNotFound. A circuit breaker and rate limiter belong here, around the send.
        """
        timeout = timeout or self.timeouts.for_kind(kind)
        budget = RetryBudget(self.retry, self._rng, self._clock)
        session_waited = 0.0
        while True:
            response: httpx.Response | None = None
            exc: Exception | None = None
            async with self._semaphore:
                self._count_request(kind)
                try:
                    response = await self._http.request(method, path, params=params, timeout=timeout)
                except httpx.RequestError as error:  # timeouts, refused/reset connections, protocol, decoding
                    exc = error
            if response is not None and response.is_success:
                return self._json(response, method, path, params)

            status = response.status_code if response is not None else None
            body = response.content if response is not None else None
            decision = classify(status, exc, body)
            where = self._where(method, path, params)

            if decision == "fail":
                message = self._message(where, status, exc, body)
                if status == 404 and session is not None and not _route_missing(body):
                    raise WahaSessionNotFound(message, status=status, method=method, path=path)
                raise WahaPermanentError(message, status=status, method=method, path=path)

            if decision == "wait_session":
                if session is None or not wait_for_session:
                    raise WahaSessionNotReady(self._message(where, status, exc, body), status=status, method=method, path=path)
                started = self._clock()
                last = await self._wait_for_session(session, self.session_wait_timeout - session_waited)
                spent = self._clock() - started
                session_waited += spent
                self._session_wait += spent
                budget.started += spent  # time waiting for the session does not eat the transient-retry budget
                if last is not None:
                    raise WahaSessionNotReady(
                        f"{self._message(where, status, exc, body)}; session {session!r} still {last} after "
                        f"waiting {session_waited:.0f}s",
                        status=status,
                        method=method,
                        path=path,
                    )
                self._count_retry("session")
                continue

            cause = retry_cause(status, exc)
            if shrink_on_timeout and cause == "timeout":
                self._count_retry(cause)
                raise _PageTimeout()
            budget.attempts += 1
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
            delay = budget.next_delay(retry_after)
            if delay is None:
                raise WahaTransientError(
                    f"{self._message(where, status, exc, body)} (gave up after {budget.attempts} attempts)",
                    retry_after=retry_after,
                    status=status,
                    method=method,
                    path=path,
                ) from exc
            self._count_retry(cause)
            logger.warning("%s -> %s; retry %d in %.2fs", where, status or type(exc).__name__, budget.attempts, delay)
            self._backoff += delay
            if status == 429:
                self._wait_429 += delay
            await self._sleep(delay)

    async def _wait_for_session(self, session: str, budget: float) -> str | None:
        """Poll the session until WORKING; None when it is, else its last status once `budget` seconds are spent.

        Raises WahaSessionNotFound when the session disappears meanwhile.
        """
        deadline = self._clock() + max(0.0, budget)
        last = "unknown"
        while self._clock() < deadline:
            await self._sleep(min(self.session_poll_interval, max(0.0, deadline - self._clock())))
            info = await self.get_session(session)
            if info.working:
                return None
            last = info.status
        return last

    # -- helpers ----------------------------------------------------------------------------------------------

    def _json(self, response: httpx.Response, method: str, path: str, params: Mapping[str, str] | None) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            where = self._where(method, path, params)
            raise WahaPermanentError(
                self._redact(f"{where} -> {response.status_code}: body is not JSON: {_snippet(response.content)}"),
                status=response.status_code,
                method=method,
                path=path,
            ) from None

    def _expect_list(self, data: Any, method: str, path: str) -> list[Any]:
        if not isinstance(data, list):
            raise WahaPermanentError(
                f"WAHA {method} {path}: expected a JSON array, got {type(data).__name__}", method=method, path=path
            )
        return data

    def _parse(self, parse: Callable[[Any], Any], data: Any, method: str, path: str) -> Any:
        try:
            return parse(data)
        except ValueError as error:
            raise WahaPermanentError(f"WAHA {method} {path}: unexpected body: {error}", method=method, path=path) from None

    @staticmethod
    def _where(method: str, path: str, params: Mapping[str, str] | None) -> str:
        """`WAHA GET /path?offset=..` with only the paging/filter params that help debugging, never secrets."""
        shown = [f"{k}={v}" for k, v in (params or {}).items() if k in ("limit", "offset") or k.startswith("filter.")]
        return f"WAHA {method} {path}" + ("?" + "&".join(shown) if shown else "")

    def _message(self, where: str, status: int | None, exc: BaseException | None, body: bytes | None) -> str:
        if status is not None:
            text = f"{where} -> HTTP {status}"
            snippet = _snippet(body)
            if snippet:
                text += f": {snippet}"
        else:
            detail = str(exc).strip() if exc is not None else ""
            text = f"{where} -> {type(exc).__name__}" + (f": {_truncate(detail)}" if detail else "")
        return self._redact(text)

    def _redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text


def _route_missing(body: bytes | None) -> bool:
    """Nest's "Cannot GET /api/..." 404: the WAHA version lacks the endpoint, the session is not the problem."""
    return bool(body) and b'"Cannot ' in body[:200]  # type: ignore[index]


def _truncate(text: str, limit: int = BODY_SNIPPET) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snippet(body: bytes | None) -> str:
    if not body:
        return ""
    return _truncate(body[: BODY_SNIPPET * 4].decode("utf-8", "replace"))
