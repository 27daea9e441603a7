"""The response size limit (WAHA_MAX_RESPONSE_MB): a WAHA response is read as an httpx stream and counted, so an
endless or huge body costs at most the limit in memory and fails with one line naming the path and the limit.

Both what arrives on the wire and what it decodes to are counted. Compressed input is decoded in small slices
through httpx's own decoders (an httpx.Response built on the counted stream), so a small compressed body cannot
inflate past the limit in one step.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import httpx

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # settings.DEFAULT_MAX_RESPONSE_MB
DECODE_SLICE = 16 * 1024  # compressed bytes decoded at a time: gzip inflates at most ~1000x, so ~16 MB per step


class ResponseTooLarge(httpx.RequestError):
    """A response body over the size limit. Deliberately not an httpx.TransportError: WahaClient classifies only
    transport errors as worth retrying, so this fails the call at once (the same request would be as large)."""


async def send_bounded(
    client: httpx.AsyncClient, method: str, path: str, *, params: httpx.QueryParams | dict[str, str] | None,
    timeout: httpx.Timeout, limit: int,
) -> httpx.Response:
    """Send one request and return its response with the body read (decoded), or raise ResponseTooLarge once the
    body is over `limit` bytes. A body read only in part closes its connection (httpx does not reuse it)."""
    request = client.build_request(method, path, params=params, timeout=timeout)
    response = await client.send(request, stream=True)
    try:
        content = await read_bounded(response, limit)
    finally:
        await response.aclose()
    return httpx.Response(response.status_code, headers=decoded_headers(response.headers), content=content,
                          request=request)


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response, at most `limit` bytes on the wire and once decoded."""
    request = response.request
    try:
        content = response.content  # an in-memory response (httpx.MockTransport's) arrives read
    except httpx.ResponseNotRead:
        pass
    else:
        if len(content) > limit:
            raise too_large(request, limit, f"of {len(content)} bytes")
        return content
    check_declared_length(request, response.headers, limit)
    chunks = [chunk async for chunk in decode_capped(request, response.headers, response.aiter_raw(), limit)]
    return b"".join(chunks)


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
    more than `limit` bytes came in or came out."""
    encoded = is_encoded(headers)
    received = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in raw:
            received += len(chunk)
            if received > limit:
                raise too_large(request, limit, f"of more than {limit} bytes on the wire")
            if not encoded:
                yield chunk
                continue
            for i in range(0, len(chunk), DECODE_SLICE):
                yield chunk[i:i + DECODE_SLICE]

    chunks: AsyncIterable[bytes] = counted()
    if encoded:
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
