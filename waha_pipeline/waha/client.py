"""Async WAHA client: one httpx.AsyncClient per WAHA server, one method per endpoint, paging and dedup.

Every request goes through `WahaClient._request`, the single place for retry, waiting for the session, counting,
the circuit breaker (breaker.py) and the per-server limiter (limiter.py). Knows nothing about the CRM or Dagster.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson

from waha_pipeline.errors import (
    WahaChatNotFound,
    WahaCircuitOpen,
    WahaError,
    WahaPermanentError,
    WahaSessionNotFound,
    WahaSessionNotReady,
    WahaTransientError,
)
from waha_pipeline.waha.models import (
    ChatRead,
    SessionInfo,
    chat_id_of,
    message_id_of,
    message_time_of,
    parse_lid_mapping,
    parse_session,
)
from waha_pipeline.waha.body_limit import DEFAULT_MAX_BODY, send_bounded
from waha_pipeline.waha.breaker import BreakerPolicy, CircuitBreaker, Outcome, Permit, shared_breaker
from waha_pipeline.waha.connections import waha_transports
from waha_pipeline.waha.limiter import ServerLimiter, shared_limiter
from waha_pipeline.waha.retry import RetryBudget, RetryPolicy, classify, parse_retry_after, retry_cause
from waha_pipeline.waha.stats import TALLY, Counters, Recorder, WahaStats

__all__ = ["KINDS", "ChatRead", "Kind", "WahaClient", "WahaStats", "WahaTimeouts"]

logger = logging.getLogger(__name__)

Kind = Literal["sessions", "chats", "messages", "lids"]
KINDS: tuple[Kind, ...] = ("sessions", "chats", "messages", "lids")

BODY_SNIPPET = 200
MIN_MESSAGE_PAGE = 50
PROBE_POLL_SECONDS = 0.05  # how often a request waiting for a half-open probe's verdict looks again
STALE_PAGES_LIMIT = 3  # consecutive non-empty pages without a new item: the server ignores `offset`
PROBE_EMPTY_PAGES = 2  # empty pages asked past an empty one before a chat's read ends without evidence of its end
MAX_PROBE_ROWS = 50_000  # store rows probed past the last message while the chat list says a later one exists
MAX_PROBE_PAGE = 8_192  # the largest page a probe asks for
NEWEST_FIRST_ENGINES = frozenset({"WEBJS", "WPP"})  # browser engines: pages newest first whatever sortOrder asks
MAX_CHATS = 1_000_000  # a chat list longer than this is taken for a server that never ends its list


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
        return httpx.Timeout(connect=self.connect, read=self._read(kind), write=self.write, pool=self.pool)

    def attempt_limit(self, kind: Kind) -> float:
        """Wall-clock bound of one attempt. httpx's read timeout is per socket read, so a server trickling bytes
        could hold an attempt forever; this caps connect + write + read as a whole."""
        return self.connect + self.write + self._read(kind)

    def _read(self, kind: Kind) -> float:
        return {"sessions": self.sessions_read, "messages": self.messages_read}.get(kind, self.list_read)


T = TypeVar("T")


@dataclass
class _SessionPoll:
    """One poller of a session shared by every request that got a 422 for it meanwhile."""

    task: asyncio.Future[str | None]
    waiters: int = 0


class _PageTimeout(Exception):
    """Internal: a message page timed out and the caller asked to shrink the page instead of retrying."""


# ---------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------


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
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-Api-Key"] = api_key
        self._api_key = api_key or None
        url = httpx.URL(base_url)
        auth: httpx.Auth | None = None
        self._secrets = [s for s in (api_key, url.password) if s and len(s) >= 4]
        if url.userinfo:  # basic auth of a proxy: sent as a header, kept out of the URL that httpx logs
            auth = httpx.BasicAuth(url.username, url.password)
            url = url.copy_with(username=None, password=None)
        self.base_url = str(url).rstrip("/")
        self.timeouts = timeouts or WahaTimeouts()
        self.retry = retry or RetryPolicy()
        self.session_wait_timeout = session_wait_timeout
        self.session_poll_interval = session_poll_interval
        self.min_page_size = max(1, min_page_size)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self.limiter = limiter or shared_limiter(self.base_url, concurrency=concurrency,
                                                 rate_per_second=rate_per_second)
        self.breaker = breaker or shared_breaker(self.base_url, breaker_policy)
        self.max_response_bytes = max_response_bytes
        transports = [transport] if transport else waha_transports(concurrency)
        self._pools = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=self.timeouts.for_kind("sessions"),
                transport=each,
                auth=auth,
                follow_redirects=False,
            )
            for each in transports
        ]
        self._next_pool = itertools.cycle(self._pools)
        self._stats = Recorder()
        self._session_polls: dict[str, _SessionPoll] = {}
        self._newest_first: dict[str, bool] = {}
        self._session_checks: dict[str, asyncio.Future[SessionInfo]] = {}  # one 404 confirmation per burst

    async def __aenter__(self) -> WahaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for poll in self._session_polls.values():
            poll.task.cancel()
        self._session_polls.clear()
        for check in self._session_checks.values():
            check.cancel()
        self._session_checks.clear()
        for pool in self._pools:
            await pool.aclose()

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
        return self._stats.total.snapshot()

    # -- sessions ---------------------------------------------------------------------------------------------

    async def get_session(self, name: str) -> SessionInfo:
        """`GET /api/sessions/{name}`; raises WahaSessionNotFound on 404."""
        path = f"/api/sessions/{quote(name, safe='')}"
        data = await self._request("sessions", "GET", path, session=name, wait_for_session=False, confirm_404=False)
        return self._parse(parse_session, data, "GET", path)

    async def list_sessions(self, all: bool = True) -> list[SessionInfo]:  # noqa: A002 - WAHA's parameter name
        """`GET /api/sessions?all=`; `all=True` includes STOPPED sessions."""
        path = "/api/sessions"
        data = self._expect_list(
            await self._request("sessions", "GET", path, params={"all": "true" if all else "false"}), "GET", path
        )
        return [self._parse(parse_session, item, "GET", path) for item in data]

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
        return await self._page_all("chats", path, base, session, page_size, chat_id_of, max_items=self.max_chats)

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
        an empty page end the chat at once (see `_read_pages`). Raw dicts, unchanged, or `encode(item)` of each as
        its page arrives (a parsed page is several times the size of its text). Deduplicated by `id` (first
        wins); items without a usable id are kept in order so the domain can reject them. A page that times out
        is re-requested at the same offset with half the limit (down to `min_page_size`), and the smaller limit
        is kept for the rest of the chat. `newest_first`: the server is known to ignore `sortOrder=asc`.
        """
        path = f"/api/{quote(session, safe='')}/chats/{quote(chat_id, safe='')}/messages"
        base: dict[str, str] = {"downloadMedia": "false", "sortBy": "timestamp", "sortOrder": "asc"}
        if gte is not None:
            base["filter.timestamp.gte"] = str(int(gte))
        base["filter.timestamp.lte"] = str(int(lte))
        return await self._read_pages(path, base, session, chat_id, page_size, gte=gte, lte=lte, last_at=last_at,
                                      encode=encode, newest_first=newest_first)

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
        max_items: int | None = None,
    ) -> list[Any]:
        """Offset paging of a list (chats, lids): `offset += limit` until an empty page; dedupe by `key` keeping
        the first occurrence; more than `max_items` items is a permanent error."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        limit, offset, stale = page_size, 0, 0
        seen: set[str] = set()
        items: list[Any] = []
        while True:
            params = {**base, "limit": str(limit), "offset": str(offset)}
            page = self._expect_list(await self._request(kind, "GET", path, params=params, session=session), "GET", path)
            if not page:
                return items
            added = 0
            for item in page:
                item_key = key(item)
                if item_key is None or item_key not in seen:
                    if item_key is not None:
                        seen.add(item_key)
                    items.append(item)
                    added += 1
            if max_items is not None and len(items) > max_items:
                raise WahaPermanentError(
                    f"WAHA GET {path}: more than {max_items} items; the list does not end (raise the limit if it "
                    "is real)",
                    method="GET",
                    path=path,
                )
            stale = _check_stale(stale, added, path, offset)
            offset += limit

    async def _read_pages(
        self,
        path: str,
        base: Mapping[str, str],
        session: str,
        chat_id: str,
        page_size: int,
        *,
        gte: int | None,
        lte: int,
        last_at: int | None,
        encode: Callable[[Any], Any] | None = None,
        newest_first: bool = False,
    ) -> ChatRead:
        """Offset paging of one chat's messages, oldest first, to its proven end (SPEC 8).

        The engines slice `limit`/`offset` in their store and drop the rows they cannot map afterwards
        (reactions, poll votes, protocol rows), so a page can be short or empty while later offsets still hold
        messages. The end rule:

        - an empty page ends the read at once, proven to `lte`, when the newest timestamp read is >= the target
          `min(last_at, lte)` (or the target lies before `gte`: the chat list says nothing is in the range);
        - otherwise further pages are asked at the following offsets, each twice the size of the one before (a
          run of dropped rows costs requests logarithmic in its length); a non-empty one resumes the paging at
          the normal size after the rows that probe spanned. Probing stops after `probe_empty_pages` empty pages,
          or, while the chat list's last-message time says a later message exists, once the probes spanned
          `max_probe_rows` rows; the read then ends unproven: proven only to the newest timestamp read
          (inclusive), or not at all when nothing was read;
        - a server that returns a chat newest first (WEBJS ignores `sortOrder`) gives no evidence for the end a
          last-message time could confirm: its read is always probed and never proven.

        A page that timed out caps every later page of the chat, probes included, at the halved limit.

        The clean case costs one request more than the data pages: the empty page after them.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        target = lte if last_at is None else min(last_at, lte)
        limit, offset, stale, empty, probed = page_size, 0, 0, 0, 0
        ceiling = max(page_size, MAX_PROBE_PAGE)  # the largest limit not known to time out
        seen: set[str] = set()
        items: list[Any] = []
        newest: int | None = None
        previous: int | None = None
        ordered = not newest_first
        while True:
            params = {**base, "limit": str(limit), "offset": str(offset)}
            can_shrink = limit > self.min_page_size
            try:
                data = await self._request("messages", "GET", path, params=params, session=session,
                                           shrink_on_timeout=can_shrink, chat=chat_id)
            except _PageTimeout:
                limit = ceiling = max(self.min_page_size, limit // 2)
                self._stats.add("page_shrinks")
                logger.info("WAHA GET %s timed out at offset %d; retrying the page with limit %d", path, offset, limit)
                continue
            page = self._expect_list(data, "GET", path)
            if not page:
                reached = newest is not None and newest >= target
                if ordered and (reached or (gte is not None and target < gte)):
                    return ChatRead(items, lte, newest)
                empty += 1
                probed += limit
                behind = last_at is not None and (newest is None or newest < target)
                if probed >= self.max_probe_rows or (not behind and empty > self.probe_empty_pages):
                    logger.info("WAHA GET %s: pages ran out at offset %d without evidence of the chat's end "
                                "(newest read %s, last message listed %s)", path, offset, newest, last_at)
                    proven = newest if ordered and newest is not None and (gte is None or newest >= gte) else None
                    return ChatRead(items, None if proven is None else min(proven, lte), newest)
                offset += limit
                limit = min(max(min(limit * 2, MAX_PROBE_PAGE), page_size), ceiling)
                continue
            empty = probed = 0
            asked, limit = limit, min(page_size, ceiling)
            added = 0
            for item in page:
                item_key = message_id_of(item)
                if item_key is not None and item_key in seen:
                    continue
                if item_key is not None:
                    seen.add(item_key)
                at = message_time_of(item)
                if at is not None:
                    if previous is not None and at < previous:
                        ordered = False
                    previous = at
                    newest = at if newest is None else max(newest, at)
                items.append(item if encode is None else encode(item))
                added += 1
            stale = _check_stale(stale, added, path, offset)
            offset += asked

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
        confirm_404: bool = True,
        chat: str | None = None,
    ) -> Any:
        """Send one logical request and return its parsed JSON body.

        Retries transient failures (capped in attempts and time), waits for the session on a 422 "session status
        is not as expected" (bounded, one shared poller per session), maps the rest to the error tree. `session`
        marks a session-scoped path: a 404 there is confirmed with `GET /api/sessions/{session}` (unless
        `confirm_404` is False: the path is that session itself), see `_explain_404`; `chat` names the chat the
        path serves. Each attempt passes the circuit breaker (fail fast with WahaCircuitOpen while open) and the
        per-server limiter.

        Time bound: retry sleeps stop at `retry.max_elapsed`; each attempt is capped by `timeouts.attempt_limit`;
        waiting for the session adds at most `session_wait_timeout`; waiting for the limiter is bounded by the
        attempts ahead in the queue, each itself capped.
        """
        timeout = timeout or self.timeouts.for_kind(kind)
        budget = RetryBudget(self.retry, self._rng, self._clock)
        session_waited = 0.0
        last_session_status: str | None = None
        where = self._where(method, path, params)
        while True:
            response, exc = await self._attempt(kind, method, path, params, timeout, where)
            if response is not None and response.is_success:
                return self._json(response, method, path, params)

            status = response.status_code if response is not None else None
            body = response.content if response is not None else None
            decision = classify(status, exc, body)

            if decision == "fail":
                message = self._message(where, status, exc, body)
                if status == 404 and session is not None and not _route_missing(body):
                    if not confirm_404:
                        raise WahaSessionNotFound(message, status=status, method=method, path=path)
                    raise await self._explain_404(session, chat, message, method, path)
                raise WahaPermanentError(message, status=status, method=method, path=path)

            if decision == "wait_session":
                if session is None or not wait_for_session:
                    raise WahaSessionNotReady(self._message(where, status, exc, body), status=status, method=method, path=path)
                remaining = self.session_wait_timeout - session_waited
                last: str | None = last_session_status or "not WORKING"
                if remaining > 0:
                    started = self._clock()
                    last = await self._await_session(session, remaining)
                    spent = self._clock() - started
                    session_waited += spent
                    self._stats.add("session_wait_seconds", spent)
                    budget.started += spent  # time waiting for the session does not eat the transient-retry budget
                    last_session_status = last or "WORKING"
                if last is not None:
                    raise WahaSessionNotReady(
                        f"{self._message(where, status, exc, body)}; session {session!r} still {last} after "
                        f"waiting {session_waited:.0f}s",
                        status=status,
                        method=method,
                        path=path,
                    )
                self._stats.retry("session")
                continue

            cause = retry_cause(status, exc)
            if shrink_on_timeout and cause == "timeout":
                self._stats.retry(cause)
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
            if self.breaker.state == "open":  # this failure (or another request's) opened it: do not sleep first
                self.breaker.release(await self._allow(where, method, path))  # raises WahaCircuitOpen
            self._stats.retry(cause)
            logger.warning("%s -> %s; retry %d in %.2fs", where, status or type(exc).__name__, budget.attempts, delay)
            self._stats.add("backoff_seconds", delay)
            if status == 429:
                self._stats.add("wait_429_seconds", delay)
            await self._sleep(delay)

    async def _attempt(
        self, kind: Kind, method: str, path: str, params: Mapping[str, str] | None, timeout: httpx.Timeout, where: str
    ) -> tuple[httpx.Response | None, Exception | None]:
        """One HTTP attempt through the breaker and the limiter: the response, or the transport error.

        A half-open breaker's probe runs shielded: when its caller is cancelled (typically because sibling requests
        of the same fetch_many were refused meanwhile), the probe still completes and records its outcome, so the
        breaker can close instead of probing and being cancelled forever.
        """
        permit = await self._allow(where, method, path, wait=self.timeouts.attempt_limit(kind))
        send = self._send(permit, kind, method, path, params, timeout, where)
        if not permit.probe:
            return await send
        probe = asyncio.ensure_future(send)
        probe.add_done_callback(_retrieve)
        return await asyncio.shield(probe)

    async def _send(
        self, permit: Permit, kind: Kind, method: str, path: str, params: Mapping[str, str] | None,
        timeout: httpx.Timeout, where: str,
    ) -> tuple[httpx.Response | None, Exception | None]:
        response: httpx.Response | None = None
        exc: Exception | None = None
        recorded = False
        try:
            async with self.limiter.slot() as waited:
                if waited > 0:
                    self._stats.add("limiter_wait_seconds", waited)
                try:
                    self.breaker.confirm(permit, where)
                except WahaCircuitOpen as error:
                    raise self._rejected(error, method, path) from None
                self._stats.request(kind)
                started = self._clock()
                limit = self.timeouts.attempt_limit(kind)
                try:
                    async with asyncio.timeout(limit):
                        response = await send_bounded(next(self._next_pool), method, path, params=params,
                                                      timeout=timeout, limit=self.max_response_bytes)
                except httpx.RequestError as error:  # timeouts, refused/reset connections, protocol, decoding
                    exc = error
                except TimeoutError:
                    exc = httpx.ReadTimeout(f"no complete response within {limit:g}s")
                latency = self._clock() - started
            outcome, cause = _breaker_outcome(response, exc)
            self._record(permit, outcome, cause)
            recorded = True
            if outcome == "success":
                self._stats.latency(latency)
        finally:
            if not recorded:
                self.breaker.release(permit)
        return response, exc

    async def _allow(self, where: str, method: str, path: str, wait: float = 0.0) -> Permit:
        """A breaker permit. While a half-open probe is in flight, wait up to `wait` seconds for its verdict
        instead of failing at once: the probe alone touches WAHA, and when it succeeds the waiting requests go on
        (otherwise the chunk that carries the probe would fail with its siblings on every recovery)."""
        deadline = self._clock() + wait
        while True:
            try:
                return self.breaker.allow(where)
            except WahaCircuitOpen as error:
                if self.breaker.probing and self._clock() < deadline:
                    await self._sleep(min(PROBE_POLL_SECONDS, max(0.0, deadline - self._clock())))
                    continue
                raise self._rejected(error, method, path) from None

    def _rejected(self, error: WahaCircuitOpen, method: str, path: str) -> WahaCircuitOpen:
        self._stats.add("breaker_rejections")
        return WahaCircuitOpen(self._redact(str(error)), retry_after=error.retry_after, method=method, path=path)

    def _record(self, permit: Permit, outcome: Outcome, cause: str) -> None:
        changed = self.breaker.record(permit, outcome, cause)
        if changed == "open":
            self._stats.add("breaker_opened")
        elif changed == "closed":
            self._stats.add("breaker_closed")

    async def _explain_404(self, session: str, chat: str | None, message: str, method: str, path: str) -> WahaError:
        """What a 404 on a session-scoped path means, from `GET /api/sessions/{session}` (SPEC 6.8): 404 there ->
        the channel is gone (WahaSessionNotFound); the session exists but is not WORKING (STOPPED paths answer 404
        too) -> WahaSessionNotReady naming its status; WORKING -> the 404 is about the chat (WahaChatNotFound) or,
        on a path of no chat, a plain permanent error. A failing confirmation is raised as it is (e.g. transient).

        Concurrent 404s of one session share one confirmation (a burst of chats of a deleted session costs one
        session request, not one per chat).
        """
        check = self._session_checks.get(session)
        if check is None or check.done():
            check = self._session_checks[session] = asyncio.ensure_future(self.get_session(session))
            check.add_done_callback(_retrieve)
        try:
            info = await asyncio.shield(check)
        except WahaSessionNotFound:
            return WahaSessionNotFound(f"{message}; session {session!r} not found", status=404, method=method,
                                       path=path)
        if not info.working:
            return WahaSessionNotReady(f"{message}; session {session!r} is {info.status}", status=404,
                                       method=method, path=path)
        if chat is not None:
            return WahaChatNotFound(f"{message}; session {session!r} is WORKING: WAHA cannot serve chat {chat}",
                                    chat_id=chat, status=404, method=method, path=path)
        return WahaPermanentError(f"{message}; session {session!r} is WORKING", status=404, method=method, path=path)

    async def _await_session(self, session: str, budget: float) -> str | None:
        """Wait until the session is WORKING (None) or `budget` is spent (its last status).

        Concurrent requests that hit a 422 for the same session share one poller: the first starts it, the others
        await its result. The poll stops when every request waiting for it is gone (cancelled).
        """
        poll = self._session_polls.get(session)
        if poll is None or poll.task.done():
            poll = self._session_polls[session] = _SessionPoll(
                asyncio.ensure_future(self._wait_for_session(session, budget))
            )
        poll.waiters += 1
        try:
            return await asyncio.shield(poll.task)
        finally:
            poll.waiters -= 1
            if poll.waiters == 0 and not poll.task.done():
                poll.task.cancel()

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
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _check_stale(stale: int, added: int, path: str, offset: int) -> int:
    """Count pages in a row that brought nothing new; raise once they show the server ignores `offset`."""
    stale = stale + 1 if added == 0 else 0
    if stale >= STALE_PAGES_LIMIT:
        raise WahaPermanentError(
            f"WAHA GET {path}: {stale} pages in a row brought nothing new at offset {offset}; "
            "the server seems to ignore offset paging",
            method="GET",
            path=path,
        )
    return stale


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shielded probe's exception as seen: its caller may be gone (cancelled) and cannot read it."""
    if not task.cancelled():
        task.exception()


def _breaker_outcome(response: httpx.Response | None, exc: BaseException | None) -> tuple[Outcome, str]:
    """What an attempt says about the server's health: 2xx success; transient failures (transport errors,
    timeouts, 408, 5xx) failure; everything else (4xx, 422, 429: the server answered on purpose) neutral."""
    if response is not None and response.is_success:
        return "success", ""
    status = response.status_code if response is not None else None
    if status != 429 and classify(status, exc) == "retry":
        return "failure", retry_cause(status, exc)
    return "neutral", ""


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
