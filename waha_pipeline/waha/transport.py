"""The httpx transports of WahaClient: waha/http11.py for plain http; for https, httpx's own, with connections that
answer httpcore's liveness check cheaply.

httpcore asks every idle connection of a pool "is your socket readable?" each time a request enters or leaves the
pool; anyio answers by rebuilding the stream's attribute table (a getpeername() syscall among others) before the
poll. Over the ~20,000 page requests of bench `scale` that was ~7% of the importer's CPU (py-spy). Here the raw
socket is looked up once per connection; the poll itself stays, so a keep-alive connection the server closed is
still noticed before it is reused.

Both kinds read a response body only up to the size limit (WAHA_MAX_RESPONSE_MB), on the wire and decoded, and then
fail the call with http11.ResponseTooLarge.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from httpcore import AsyncNetworkStream
from httpcore._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore._utils import is_socket_readable

from waha_pipeline.waha.http11 import (
    DEFAULT_MAX_BODY,
    Http11Transport,
    ResponseTooLarge,
    check_declared_length,
    decode_capped,
    decoded_headers,
    is_encoded,
)

KEEPALIVE_EXPIRY_S = 30.0
HTTPCORE_POOL_CONNECTIONS = 4  # connections per httpcore pool; see waha_transports


class _Stream(AnyIOStream):
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream)
        self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return super().get_extra_info(info)

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> AsyncNetworkStream:
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, AnyIOStream)
        return _Stream(tls._stream)


class _Backend(AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> AsyncNetworkStream:
        stream = await super().connect_tcp(*args, **kwargs)
        assert isinstance(stream, AnyIOStream)
        return _Stream(stream._stream)


class _CappedStream(httpx.AsyncByteStream):
    """httpcore's body stream read through decode_capped; closing it closes (and so drops) the connection."""

    def __init__(self, request: httpx.Request, response: httpx.Response, limit: int) -> None:
        self._request, self._response, self._limit = request, response, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raw = self._response.stream
        assert isinstance(raw, httpx.AsyncByteStream)
        async for chunk in decode_capped(self._request, self._response.headers, raw, self._limit):
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class CappedHTTPTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport with response bodies limited to `max_body` bytes (on the wire and decoded)."""

    def __init__(self, *args: Any, max_body: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_body = max_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        try:
            check_declared_length(request, response.headers, self._max_body)
        except ResponseTooLarge:
            await response.aclose()
            raise
        headers = decoded_headers(response.headers) if is_encoded(response.headers) else response.headers
        return httpx.Response(response.status_code, headers=headers, extensions=response.extensions,
                              stream=_CappedStream(request, response, self._max_body))


def waha_transports(
    base_url: httpx.URL, concurrency: int, max_response_bytes: int = DEFAULT_MAX_BODY
) -> list[httpx.AsyncBaseTransport]:
    """The transports one WahaClient takes in turn, `concurrency` connections in all, each response body limited
    to `max_response_bytes` (WAHA_MAX_RESPONSE_MB).

    httpcore scans every connection of its pool (and counts idle ones per connection, O(N^2)) each time a request
    enters or leaves it; small pools taken in turn keep that flat. Client CPU per page request at concurrency 32:
    2.8 ms with pools of 8, 2.1 ms with pools of 4. Http11Transport has no such scan: one is enough.
    """
    plain = base_url.scheme == "http"
    pools = 1 if plain else max(1, -(-concurrency // HTTPCORE_POOL_CONNECTIONS))
    per_pool = -(-concurrency // pools)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    if plain:
        return [Http11Transport(limits, max_body=max_response_bytes)]
    return [httpcore_transport(limits, _ssl_context(), max_body=max_response_bytes) for _ in range(pools)]


def httpcore_transport(
    limits: httpx.Limits, verify: ssl.SSLContext, max_body: int = DEFAULT_MAX_BODY
) -> httpx.AsyncHTTPTransport:
    transport = CappedHTTPTransport(limits=limits, verify=verify, max_body=max_body)
    transport._pool._network_backend = _Backend()  # httpx 0.28 passes no backend through; pinned in pyproject
    return transport


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One default context for every pool and client: loading the CA bundle costs ~50 ms each time."""
    return httpx.create_ssl_context()
