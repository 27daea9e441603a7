"""Plain-HTTP/1.1 keep-alive transport for httpx on asyncio protocols, framed by h11 (httpcore's own parser).

Why: per page request, httpcore's pool bookkeeping and anyio's stream layer cost ~0.5 ms of CPU on loopback, about
two thirds of what the client spends on a request; over the ~20,000 page requests of bench `scale` that was ~12%
of the importer's CPU. h11 still does all the HTTP framing (Content-Length, chunked, close-delimited bodies,
keep-alive rules), so what this module owns is only the socket plumbing and the pool. HTTPS keeps httpx's own
transport (transport.waha_transports decides). Proxy variables of the environment are not used, as before this
transport: httpx ignores them whenever a client is given its transport.

Bodies are read whole: the WAHA client parses every page as one JSON document anyway. Request bodies are written
whole too (the WAHA client sends GETs). A body is read only up to `max_body` bytes (WAHA_MAX_RESPONSE_MB), on the
wire and once decoded, so an endless or huge response costs at most that much memory and fails with
ResponseTooLarge, which the client does not retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import h11
import httpx

Origin = tuple[str, int]

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # settings.DEFAULT_MAX_RESPONSE_MB
DECODE_SLICE = 16 * 1024  # compressed bytes decoded at a time: gzip inflates at most ~1000x, so ~16 MB per step


class ResponseTooLarge(httpx.RequestError):
    """A response body over the size limit. Deliberately not an httpx.TransportError: WahaClient classifies only
    transport errors as worth retrying, so this fails the call at once (the same request would be as large)."""


def too_large(request: httpx.Request, limit: int, detail: str) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"{request.method} {request.url.path}: response body {detail}, over the {limit / 2**20:g} MB limit "
        "(WAHA_MAX_RESPONSE_MB)", request=request)


def check_declared_length(request: httpx.Request, headers: httpx.Headers, limit: int) -> None:
    """Refuse a body whose Content-Length alone is over the limit, before reading any of it."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(request, limit, f"of {int(declared)} bytes (Content-Length)")


def is_encoded(headers: httpx.Headers) -> bool:
    return headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")


def decoded_headers(headers: httpx.Headers) -> httpx.Headers:
    """The headers of a body handed on already decoded: no Content-Encoding, no (wire) Content-Length."""
    out = httpx.Headers(headers)
    for name in ("content-encoding", "content-length"):
        if name in out:
            del out[name]
    return out


async def decode_capped(
    request: httpx.Request, headers: httpx.Headers, raw: AsyncIterable[bytes], limit: int
) -> AsyncIterator[bytes]:
    """The decoded body (gzip, deflate, ... as httpx decodes it) of `raw`, raising ResponseTooLarge as soon as
    more than `limit` bytes came in or came out. Compressed input is decoded in small slices, so a small
    compressed body cannot inflate past the limit in one step."""
    received = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in raw:
            received += len(chunk)
            if received > limit:
                raise too_large(request, limit, f"of more than {limit} bytes on the wire")
            for i in range(0, len(chunk), DECODE_SLICE):
                yield chunk[i:i + DECODE_SLICE]

    chunks: AsyncIterable[bytes] = counted()
    if is_encoded(headers):
        chunks = httpx.Response(200, headers=headers, stream=_Stream(chunks), request=request).aiter_bytes()
    produced = 0
    async for chunk in chunks:
        produced += len(chunk)
        if produced > limit:
            raise too_large(request, limit, f"of more than {limit} bytes once decoded")
        yield chunk


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class _Body(httpx.AsyncByteStream):
    """The body already received, handed to httpx as a stream so it decodes and times it like any other."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._content


class _Connection(asyncio.Protocol):
    """One TCP connection and its h11 state; the coroutine awaiting a response pulls events from it."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None  # uvloop's transports are not asyncio.Transport subclasses
        self.idle_since = 0.0
        self._active = False
        self._lost = False
        self._wakeup: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:  # bytes nobody asked for (say, a 408 before closing): the connection is spent
            self.close()
            return
        self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        if self._active:
            self.h11.receive_data(b"")
        self._lost = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()

    # -- used by the transport
    def reusable(self, now: float, expiry: float | None) -> bool:
        assert self.transport is not None
        fresh = expiry is None or now - self.idle_since < expiry
        return fresh and not self._lost and not self.transport.is_closing() and self.h11.our_state is h11.IDLE

    def close(self) -> None:
        self._lost = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: httpx.Request, payload: bytes, read_timeout: float | None) -> h11.Response:
        """Send the request, return the response head; the body follows through `body`."""
        assert self.transport is not None
        self._active = True
        h = self.h11
        target = request.url.raw_path
        data = h.send(h11.Request(method=request.method, target=target, headers=request.headers.raw))
        if payload:
            data += h.send(h11.Data(data=payload))
        self.transport.write(data + h.send(h11.EndOfMessage()))
        while True:
            event = await self._next_event(request, read_timeout)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 1xx: the real answer follows
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the response",
                                                request=request)

    async def body(self, request: httpx.Request, read_timeout: float | None, limit: int) -> bytes:
        """The whole body, or ResponseTooLarge once more than `limit` bytes arrived (the caller closes us)."""
        chunks = []
        received = 0
        while True:
            event = await self._next_event(request, read_timeout)
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > limit:
                    raise too_large(request, limit, f"of more than {limit} bytes (stopped reading at {received})")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        self._active = False
        h = self.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]:
            h.start_next_cycle()  # keep-alive; anything else (Connection: close, HTTP/1.0, extra bytes) is spent
        return b"".join(chunks)

    async def _next_event(self, request: httpx.Request, read_timeout: float | None) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            if event is h11.PAUSED:
                raise httpx.RemoteProtocolError("the server sent more than one response", request=request)
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("Server disconnected without sending a complete response.",
                                                    request=request)
                return event
            if self._lost:
                raise httpx.ReadError("connection lost while waiting for the response", request=request)
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._wakeup
            except TimeoutError:
                raise httpx.ReadTimeout(f"no data within {read_timeout:g}s", request=request) from None
            finally:
                self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class Http11Transport(httpx.AsyncBaseTransport):
    """At most `limits.max_connections` connections per transport, idle ones reused newest first and dropped after
    `limits.keepalive_expiry` seconds. A request that fails or is cancelled mid-way closes its connection. Bodies
    over `max_body` bytes (on the wire or decoded) raise ResponseTooLarge. `clock` dates idle connections (a
    fake one lets a test age them without waiting)."""

    def __init__(self, limits: httpx.Limits, max_body: int = DEFAULT_MAX_BODY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._max_body = max_body
        self._expiry = limits.keepalive_expiry
        self._max_idle = limits.max_keepalive_connections
        self._slots = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"this transport speaks plain http, not {request.url.scheme!r}",
                                            request=request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = request.extensions.get("timeout", {})
        payload = await request.aread()
        await self._acquire(request, timeouts.get("pool"))
        try:
            origin = (request.url.host, request.url.port or 80)
            conn = self._reuse(origin) or await self._connect(request, origin, timeouts.get("connect"))
            try:
                head = await conn.exchange(request, payload, timeouts.get("read"))
                headers = httpx.Headers(head.headers.raw_items())
                check_declared_length(request, headers, self._max_body)
                content = await conn.body(request, timeouts.get("read"), self._max_body)
            except BaseException:  # a timeout, a cancellation, a broken response: the connection is not reused
                conn.close()
                raise
            self._release_connection(origin, conn)
        finally:
            if self._slots is not None:
                self._slots.release()
        if is_encoded(headers):  # decoded here, within the limit, instead of by httpx without one
            content = b"".join([chunk async for chunk in decode_capped(request, headers, _Body(content),
                                                                       self._max_body)])
            headers = decoded_headers(headers)
        return httpx.Response(
            head.status_code,
            headers=headers,
            stream=_Body(content),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _acquire(self, request: httpx.Request, timeout: float | None) -> None:
        if self._slots is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {timeout:g}s", request=request) from None

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.reusable(now, self._expiry):
                return conn
            conn.close()
        return None

    async def _connect(self, request: httpx.Request, origin: Origin, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Connection, *origin)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {origin[0]}:{origin[1]} within {timeout:g}s",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return conn

    def _release_connection(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        full = self._max_idle is not None and len(idle) >= self._max_idle
        if self._closed or full or conn.h11.our_state is not h11.IDLE:
            conn.close()
            return
        conn.idle_since = self._clock()
        idle.append(conn)
