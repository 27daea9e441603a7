"""The one request path of WahaClient: send, retry, wait for the session, circuit breaker, limiter, counting.

`RequestLoop.request` sends one logical request and returns its parsed JSON body: each attempt passes the circuit
breaker (breaker.py) and the per-server limiter (limiter.py), goes out on the next of the client's httpx clients
(connections.py) with its body read within the size limit (body_limit.py), and is counted (stats.py); transient
failures are retried (retry.py), a 422 for a session that is not WORKING waits for it, everything else maps to the
error tree (errors.py). Knows no endpoint but the session one it needs itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
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
from waha_pipeline.waha.body_limit import send_bounded
from waha_pipeline.waha.breaker import CircuitBreaker, Outcome, Permit
from waha_pipeline.waha.limiter import ServerLimiter
from waha_pipeline.waha.models import SessionInfo, parse_session
from waha_pipeline.waha.retry import RetryBudget, RetryPolicy, classify, parse_retry_after, retry_cause
from waha_pipeline.waha.stats import Recorder

logger = logging.getLogger("waha_pipeline.waha.client")  # one logger for everything WahaClient does

Kind = Literal["sessions", "chats", "messages", "lids"]
KINDS: tuple[Kind, ...] = ("sessions", "chats", "messages", "lids")

BODY_SNIPPET = 200
PROBE_POLL_SECONDS = 0.05  # how often a request waiting for a half-open probe's verdict looks again


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


@dataclass
class _SessionPoll:
    """One poller of a session shared by every request that got a 422 for it meanwhile."""

    task: asyncio.Future[str | None]
    waiters: int = 0


class PageTimeout(Exception):
    """A message page timed out and the caller asked to shrink the page instead of retrying (paging.py)."""


class RequestLoop:
    """Sends the requests of one WahaClient: `clients` (httpx clients of one server) are taken in turn; `breaker`
    and `limiter` are the server's; every wait reads `clock` and sleeps through `sleep`; `secrets` never appear in
    an error message."""

    def __init__(
        self,
        clients: Sequence[httpx.AsyncClient],
        *,
        timeouts: WahaTimeouts,
        retry: RetryPolicy,
        breaker: CircuitBreaker,
        limiter: ServerLimiter,
        session_wait_timeout: float,
        session_poll_interval: float,
        max_response_bytes: int,
        secrets: Sequence[str],
        sleep: Callable[[float], Awaitable[Any]],
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.timeouts = timeouts
        self.retry = retry
        self.breaker = breaker
        self.limiter = limiter
        self.session_wait_timeout = session_wait_timeout
        self.session_poll_interval = session_poll_interval
        self.max_response_bytes = max_response_bytes
        self.stats = Recorder()
        self._clients = list(clients)
        self._next_client = itertools.cycle(self._clients)
        self._secrets = list(secrets)
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._session_polls: dict[str, _SessionPoll] = {}
        self._session_checks: dict[str, asyncio.Future[SessionInfo]] = {}  # one 404 confirmation per burst

    async def aclose(self) -> None:
        for poll in self._session_polls.values():
            poll.task.cancel()
        self._session_polls.clear()
        for check in self._session_checks.values():
            check.cancel()
        self._session_checks.clear()
        for client in self._clients:
            await client.aclose()

    async def session(self, name: str) -> SessionInfo:
        """`GET /api/sessions/{name}`; raises WahaSessionNotFound on 404. The loop asks it itself while it waits
        for a session and to explain a 404."""
        path = f"/api/sessions/{quote(name, safe='')}"
        data = await self.request("sessions", "GET", path, session=name, wait_for_session=False, confirm_404=False)
        return parse_body(parse_session, data, "GET", path)

    async def request(
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
                    self.stats.add("session_wait_seconds", spent)
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
                self.stats.retry("session")
                continue

            cause = retry_cause(status, exc)
            if shrink_on_timeout and cause == "timeout":
                self.stats.retry(cause)
                raise PageTimeout()
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
            self.stats.retry(cause)
            logger.warning("%s -> %s; retry %d in %.2fs", where, status or type(exc).__name__, budget.attempts, delay)
            self.stats.add("backoff_seconds", delay)
            if status == 429:
                self.stats.add("wait_429_seconds", delay)
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
                    self.stats.add("limiter_wait_seconds", waited)
                try:
                    self.breaker.confirm(permit, where)
                except WahaCircuitOpen as error:
                    raise self._rejected(error, method, path) from None
                self.stats.request(kind)
                started = self._clock()
                limit = self.timeouts.attempt_limit(kind)
                try:
                    async with asyncio.timeout(limit):
                        response = await send_bounded(next(self._next_client), method, path, params=params,
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
                self.stats.latency(latency)
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
        self.stats.add("breaker_rejections")
        return WahaCircuitOpen(self._redact(str(error)), retry_after=error.retry_after, method=method, path=path)

    def _record(self, permit: Permit, outcome: Outcome, cause: str) -> None:
        changed = self.breaker.record(permit, outcome, cause)
        if changed == "open":
            self.stats.add("breaker_opened")
        elif changed == "closed":
            self.stats.add("breaker_closed")

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
            check = self._session_checks[session] = asyncio.ensure_future(self.session(session))
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
            info = await self.session(session)
            if info.working:
                return None
            last = info.status
        return last

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


def expect_list(data: Any, method: str, path: str) -> list[Any]:
    """`data` when it is a JSON array; a permanent error naming the request otherwise."""
    if not isinstance(data, list):
        raise WahaPermanentError(
            f"WAHA {method} {path}: expected a JSON array, got {type(data).__name__}", method=method, path=path
        )
    return data


def parse_body(parse: Callable[[Any], Any], data: Any, method: str, path: str) -> Any:
    """`parse(data)`, its ValueError turned into a permanent error naming the request."""
    try:
        return parse(data)
    except ValueError as error:
        raise WahaPermanentError(f"WAHA {method} {path}: unexpected body: {error}", method=method, path=path) from None


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
