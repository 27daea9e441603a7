"""Auth, request accounting, latency and fault injection in front of every route, in one pure-ASGI middleware
(no BaseHTTPMiddleware overhead): with no faults set it costs a handful of attribute reads on top of the counters."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from waha_pipeline.simulator.faults import (
    GARBAGE, GARBAGE_BODY, HANG, NO_FAULT, NONE, RATE_LIMIT, RESET, Decision, Faults, html_body,
)
from waha_pipeline.simulator.http_common import json_response
from waha_pipeline.simulator.state import SimulatorState


def _stat_kind(path: str) -> str:
    if path.startswith("/api/sessions"):
        return "sessions"
    if path.startswith("/api/") and not path.startswith("/api/server"):
        if "/messages" in path:
            return "messages"
        if "/lids" in path:
            return "lids"
        if "/chats" in path:
            return "chats"
    return "other"


def _session_of(path: str) -> str | None:
    """The session a WAHA path names (/api/sessions/{s}[/...] or /api/{s}/...), else None."""
    if not path.startswith("/api/"):
        return None
    parts = path[5:].split("/", 2)
    if parts[0] == "sessions":
        return (parts[1] or None) if len(parts) > 1 else None
    if parts[0] == "server":
        return None
    return parts[0] or None


TRANSPORT_KEY = "waha_sim.transport"  # server._SimHttpProtocol puts the connection's transport in scope["state"]


def _reason(status: int) -> str:
    return {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}.get(status, "Error")


async def _sleep_unless_gone(receive: Receive, seconds: float) -> tuple[bool, Receive]:
    """Sleep `seconds` unless the client disconnects first. Returns (gone, receive to hand to the app)."""
    buffered: list[Any] = []

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            buffered.append(message)

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        if not watcher.done():
            watcher.cancel()
    if watcher in done:
        return True, receive

    async def replay() -> Any:
        return buffered.pop(0) if buffered else await receive()

    return False, replay


class SimMiddleware:
    """Counts every request, enforces X-Api-Key on /api, applies session plans and injected faults.

    Order for a WAHA request: count -> `down` (503 at once) -> 401 -> session plans tick -> draw the fault
    -> wait at the max_concurrent gate -> latency -> outcome (reset / hang / 429 / 5xx / the real answer).
    With no faults set this is a handful of attribute reads on top of the counters.
    """

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state
        self._sem: asyncio.Semaphore | None = None
        self._sem_size: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        state = self.state
        stats = state.stats
        if path.startswith("/_sim"):
            with stats._lock:
                stats.control += 1
            await self.app(scope, receive, send)
            return
        faults = state.faults
        kind = _stat_kind(path)
        cap = faults.max_concurrent
        if cap:
            stats.arrive(kind)
        else:
            stats.begin(kind)
        admitted = not cap
        status_box: list[int | None] = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            if faults.down:
                stats.fault("down")
                await json_response({"message": "Service Unavailable", "error": "Service Unavailable",
                                     "statusCode": 503}, 503)(scope, receive, send_wrapper)
                return
            if path.startswith("/api") and state.api_key is not None and not self._authorized(scope):
                await json_response({"message": "Unauthorized", "statusCode": 401}, 401)(scope, receive, send_wrapper)
                return
            if (state.plans or state.delete_when) and (name := _session_of(path)) is not None:
                state.tick(name)
            if faults.random:
                decision = state.decider.decide(faults, scope["method"], path, scope.get("query_string", b""),
                                                kind in faults.only_kinds)
            elif faults.latency_ms:
                decision = Decision(NONE, faults.latency_ms / 1000.0)
            else:
                decision = NO_FAULT
            if cap:
                if self._sem is None or self._sem_size != cap:
                    self._sem, self._sem_size = asyncio.Semaphore(cap), cap
                async with self._sem:
                    stats.admit()
                    admitted = True
                    await self._serve(decision, faults, scope, receive, send_wrapper, status_box)
            else:
                await self._serve(decision, faults, scope, receive, send_wrapper, status_box)
        finally:
            if not admitted:
                stats.admit()
            stats.end(status_box[0])

    async def _serve(self, d: Decision, faults: Faults, scope: Scope, receive: Receive, send: Send,
                     status_box: list[int | None]) -> None:
        if d.delay_s:
            await asyncio.sleep(d.delay_s)
        outcome = d.outcome
        if outcome == NONE:
            await self.app(scope, receive, send)
            return
        stats = self.state.stats
        if outcome == RESET:
            stats.fault("reset")
            status_box[0] = None
            await self._reset(scope)
        elif outcome == HANG:
            stats.fault("hang")
            gone, receive = await _sleep_unless_gone(receive, faults.hang_s)
            if gone:  # the client gave up (its read timeout): nobody to answer
                status_box[0] = None
                return
            await self.app(scope, receive, send)
        elif outcome == GARBAGE:
            stats.fault("garbage")
            await Response(GARBAGE_BODY, status_code=200, media_type="text/html; charset=utf-8")(scope, receive, send)
        elif outcome == RATE_LIMIT:
            stats.fault("429")
            response = json_response({"statusCode": 429, "message": "ThrottlerException: Too Many Requests"}, 429)
            response.headers["Retry-After"] = str(faults.retry_after_s)
            await response(scope, receive, send)
        else:
            stats.fault("5xx")
            if d.html:
                stats.fault("html")
                await Response(html_body(d.status), status_code=d.status,
                               media_type="text/html; charset=utf-8")(scope, receive, send)
            else:
                await json_response(self._error_body(d.status, scope), d.status)(scope, receive, send)

    def _error_body(self, status: int, scope: Scope) -> dict:
        if status == 500:  # Nest AllExceptionsFilter for a non-HTTP exception (waha_api.md 9)
            return {"statusCode": 500, "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "exception": {"message": "injected fault (WAHA simulator)", "name": "Error"},
                    "request": {"path": scope["path"], "method": scope["method"], "body": {},
                                "query": dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))},
                    "version": {"version": self.state.version, "engine": self.state.engine, "tier": "CORE"}}
        return {"message": _reason(status), "error": _reason(status), "statusCode": status}

    @staticmethod
    async def _reset(scope: Scope) -> None:
        """Close the TCP connection with an RST and no HTTP response. Needs the transport that
        server._SimHttpProtocol exposes; without it (another ASGI server) raise, which is the nearest thing."""
        transport = (scope.get("state") or {}).get(TRANSPORT_KEY)
        if transport is None:
            raise ConnectionResetError("injected connection reset (no transport to abort)")
        if not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # let connection_lost mark the request disconnected, so uvicorn does not try to answer 500 itself
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _authorized(self, scope: Scope) -> bool:
        expected = self.state.api_key or ""
        for k, v in scope["headers"]:
            if k == b"x-api-key":
                return hmac.compare_digest(v.decode("latin-1"), expected)
        qs = scope.get("query_string", b"")
        if b"x-api-key" in qs:
            got = parse_qs(qs.decode("latin-1")).get("x-api-key", [""])[0]
            return hmac.compare_digest(got, expected)
        return False
