"""Pins `WahaClient.measured`: each chunk's request count is its own even when chunks fetch concurrently."""

from __future__ import annotations

import asyncio

import httpx

from waha_pipeline.waha.client import WahaClient


def test_concurrent_scopes_count_only_their_own_requests(small_sim) -> None:
    base = small_sim.base_url

    async def scenario() -> tuple[int, int, int]:
        async with WahaClient(base, concurrency=8) as client:
            listed = await client.list_chats("demo")
            chats = [c["id"] if isinstance(c["id"], str) else c["id"]["_serialized"] for c in listed]
            direct = [c for c in chats if c.endswith(("@c.us", "@lid"))]
            # evidence for the end of each chat; 2**40 stands for "listed without a time": probed, never proven
            last_at = {chat: raw.get("conversationTimestamp") or 2**40 for chat, raw in zip(chats, listed)}
            before = client.stats().requests
            (_, a), (_, b) = await asyncio.gather(
                client.measured(client.fetch_many("demo", direct[:40], gte=None, lte=2**40, page_size=3)),
                client.measured(client.fetch_many("demo", direct[40:45], gte=None, lte=2**40, page_size=500,
                                                  last_at=last_at)),
            )
            return a.requests, b.requests, client.stats().requests - before

    httpx.post(f"{base}/_sim/reset-stats")
    a, b, total = asyncio.run(scenario())
    assert b == 10, "5 chats with one full page and one empty page each"
    assert a > 80 and a + b == total
