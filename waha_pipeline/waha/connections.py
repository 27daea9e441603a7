"""The connections of one WahaClient: httpx's stock transport (httpcore), in pools of 4 connections taken in turn.

httpcore scans every connection of its pool each time a request enters or leaves it; small pools taken in turn
keep that flat (-9% client CPU per page request at concurrency 32 against one pool of 32, docs/performance.md,
"HTTP transport"). Each pool is a plain httpx.AsyncHTTPTransport behind its own httpx.AsyncClient: no private API.
Proxy variables of the environment are not used: httpx ignores them whenever a client is given its transport.
"""

from __future__ import annotations

import functools
import ssl

import httpx

KEEPALIVE_EXPIRY_S = 30.0
POOL_CONNECTIONS = 4  # connections per pool


def waha_transports(
    concurrency: int, *, keepalive_expiry: float = KEEPALIVE_EXPIRY_S
) -> list[httpx.AsyncHTTPTransport]:
    """The transports one WahaClient takes in turn, `concurrency` connections in all, idle ones closed after
    `keepalive_expiry` seconds."""
    pools = max(1, -(-concurrency // POOL_CONNECTIONS))
    per_pool = -(-concurrency // pools)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool,
                          keepalive_expiry=keepalive_expiry)
    return [httpx.AsyncHTTPTransport(limits=limits, verify=_ssl_context()) for _ in range(pools)]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One default context for every pool and client: loading the CA bundle costs ~50 ms each time."""
    return httpx.create_ssl_context()
