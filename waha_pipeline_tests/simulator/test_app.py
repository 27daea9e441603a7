"""The simulator speaks WAHA's wire protocol (waha_api.md) over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from waha_pipeline.simulator import SimulatorHandle
from waha_pipeline.simulator.models import DIRECT_SWA, GROUP, LID_UNKNOWN, ONE_TO_ONE_KINDS, SimChat

from .conftest import ANCHOR, API_KEY, ServerWaits
from .wire import is_good, wire_time


def serial(wire: object) -> str:
    return wire["_serialized"] if isinstance(wire, dict) else wire  # type: ignore[index,return-value]


def msgs_url(chat_id: str, session: str = "demo") -> str:
    return f"/api/{session}/chats/{quote(chat_id, safe='')}/messages"


def page_all(client: httpx.Client, chat: SimChat, limit: int, **params: object) -> tuple[list[dict], list[int]]:
    """Offset paging over every stored row of the window (an empty page is not the end); returns every item
    and the page sizes seen."""
    gte, lte = params.get("filter.timestamp.gte"), params.get("filter.timestamp.lte")
    _, lo, hi = chat.window(gte, lte, None)  # type: ignore[arg-type]
    items: list[dict] = []
    sizes: list[int] = []
    offset = 0
    while offset < hi - lo or not sizes:
        r = client.get(msgs_url(chat.id), params={"limit": limit, "offset": offset, "downloadMedia": "false",
                                                  **params})
        assert r.status_code == 200, r.text
        page = r.json()
        sizes.append(len(page))
        items += page
        offset += limit
    return items, sizes


@pytest.fixture()
def demo(sim: SimulatorHandle) -> Iterator[list[SimChat]]:
    yield sim.state.dataset.sessions["demo"].chats


def test_chats_listing_paging_and_sorting(client: httpx.Client, demo: list[SimChat]) -> None:
    everything = client.get("/api/demo/chats").json()
    assert len(everything) == len(demo)
    ids = [serial(c["id"]) for c in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # GOWS default: id ascending
    paged: list[dict] = []
    offset = 0
    while page := client.get("/api/demo/chats", params={"limit": 7, "offset": offset, "sortBy": "id",
                                                        "sortOrder": "asc"}).json():
        assert len(page) <= 7
        paged += page
        offset += 7
    assert paged == everything
    desc = client.get("/api/demo/chats", params={"sortBy": "id", "sortOrder": "desc"}).json()
    assert desc == everything[::-1]
    by_ts = client.get("/api/demo/chats", params={"sortBy": "conversationTimestamp", "sortOrder": "desc"}).json()
    stamps = [c["conversationTimestamp"] for c in by_ts]
    known = [t for t in stamps if t is not None]
    assert known == sorted(known, reverse=True) and stamps[: len(known)] == known  # nulls last
    assert None in stamps and max(known) <= ANCHOR
    by_name = client.get("/api/demo/chats", params={"sortBy": "name", "sortOrder": "asc", "limit": 5}).json()
    assert len(by_name) == 5 and all(c["name"] is not None for c in by_name)
    assert any(isinstance(c["id"], dict) for c in everything)
    assert any(isinstance(c["id"], str) and c["id"].endswith("@s.whatsapp.net") for c in everything)


def test_offset_paging_with_short_pages_yields_truth(client: httpx.Client, sim: SimulatorHandle,
                                                     demo: list[SimChat]) -> None:
    gte, lte = ANCHOR - 180 * 86400, ANCHOR
    truth = sim.truth("demo", window_start=gte, window_end=lte)
    expected: dict[str, set[str]] = {}
    for m in truth["messages"]:
        expected.setdefault(m["chat_id"], set()).add(m["external_id"])
    rejects: dict[str, int] = {}
    for r in truth["rejects"]:
        rejects[r["chat_id"]] = rejects.get(r["chat_id"], 0) + 1
    short_before_end = 0
    checked = 0
    for chat in demo:
        if chat.kind not in ONE_TO_ONE_KINDS:
            continue
        items, sizes = page_all(client, chat, 4, **{"filter.timestamp.gte": gte, "filter.timestamp.lte": lte,
                                                    "sortBy": "timestamp", "sortOrder": "asc"})
        short_before_end += sum(1 for s in sizes[:-1] if s < 4)
        good = [m for m in items if is_good(m)]
        assert {m["id"] for m in good} == expected.get(chat.id, set()), chat.id
        assert len(items) - len(good) == rejects.get(chat.id, 0), chat.id
        assert all(gte <= wire_time(m) <= lte for m in good)  # type: ignore[operator]
        checked += 1
    assert checked > 50
    assert short_before_end > 0, "hidden reactions must shorten some non-final pages"
    assert truth["rejects"], "the window should hold malformed messages"


def test_bounds_inclusive_and_shared_seconds(client: httpx.Client, demo: list[SimChat]) -> None:
    chat, ts = next((c, e.ts) for c in demo if c.kind in ONE_TO_ONE_KINDS
                    for a, e in zip(c.entries, c.entries[1:])
                    if a.ts == e.ts and not a.hidden and not e.hidden and a.external_id != e.external_id)
    page = client.get(msgs_url(chat.id), params={"limit": 100, "filter.timestamp.gte": ts,
                                                 "filter.timestamp.lte": ts}).json()
    want = [e for e in chat.entries if e.ts == ts and not e.hidden]
    assert len(page) == len(want) >= 2 and {wire_time(m) for m in page} == {ts}


def test_sort_order_default_limit_and_direction_filter(client: httpx.Client, demo: list[SimChat]) -> None:
    chat = max((c for c in demo if c.kind in ONE_TO_ONE_KINDS), key=lambda c: len(c.entries))
    asc = client.get(msgs_url(chat.id), params={"limit": 10_000, "sortOrder": "asc"}).json()
    desc = client.get(msgs_url(chat.id), params={"limit": 10_000, "sortBy": "messageTimestamp"}).json()
    assert desc == asc[::-1] and len(asc) >= 20
    keys = [(m.get("timestamp") if isinstance(m.get("timestamp"), int) else 0, m.get("id") or "") for m in asc]
    good_keys = [k for k, m in zip(keys, asc) if isinstance(m.get("timestamp"), int)]
    assert good_keys == sorted(good_keys)
    default = client.get(msgs_url(chat.id)).json()
    assert 0 < len(default) <= 10 and default == [m for m in desc[: len(default) + 2] if m in default]
    mine = client.get(msgs_url(chat.id), params={"limit": 10_000, "filter.fromMe": "true"}).json()
    theirs = client.get(msgs_url(chat.id), params={"limit": 10_000, "filter.fromMe": "false"}).json()
    assert mine and theirs and len(mine) + len(theirs) == len(asc)
    assert all(m["fromMe"] in (True, "true") for m in mine)


def test_chat_id_aliases_and_unknown_chat(client: httpx.Client, demo: list[SimChat]) -> None:
    swa = next(c for c in demo if c.kind == DIRECT_SWA)
    digits = swa.id.split("@")[0]
    base = client.get(msgs_url(swa.id), params={"limit": 1000}).json()
    assert base
    assert client.get(msgs_url(f"{digits}@s.whatsapp.net"), params={"limit": 1000}).json() == base
    assert client.get(msgs_url(digits), params={"limit": 1000}).json() == base
    assert client.get(f"/api/demo/chats/{swa.id}/messages", params={"limit": 1000}).json() == base  # raw "@"
    r = client.get(msgs_url("123456789@c.us"))
    assert r.status_code == 200 and r.json() == []
    group = next(c for c in demo if c.kind == GROUP)
    assert all(m["participant"] for m in client.get(msgs_url(group.id), params={"limit": 50}).json())


def test_api_key(sim: SimulatorHandle) -> None:
    url = sim.base_url
    for headers in ({}, {"X-Api-Key": "wrong"}):
        r = httpx.get(f"{url}/api/demo/chats", headers=headers)
        assert r.status_code == 401 and r.json() == {"message": "Unauthorized", "statusCode": 401}
    assert httpx.get(f"{url}/api/sessions", params={"x-api-key": API_KEY}).status_code == 200
    assert httpx.get(f"{url}/api/server/version").status_code == 401
    assert httpx.get(f"{url}/ping").status_code == 200 and httpx.get(f"{url}/health").status_code == 200


def test_sessions_and_their_statuses(client: httpx.Client, sim: SimulatorHandle) -> None:
    names = [s["name"] for s in client.get("/api/sessions").json()]
    assert names == ["demo", "acme", "pairing"]  # STOPPED hidden unless all=true
    assert [s["name"] for s in client.get("/api/sessions", params={"all": "true"}).json()][-1] == "old"
    acme = client.get("/api/sessions/acme").json()
    assert acme["status"] == "WORKING" and acme["config"]["metadata"] == {"tenant_id": "t-acme"}
    assert "metadata" not in client.get("/api/sessions/demo").json()["config"]
    me = client.get("/api/sessions/demo/me").json()
    assert me["id"] == f"{sim.state.dataset.sessions['demo'].me_phone}@c.us"
    assert client.get("/api/sessions/pairing/me").json() is None
    r = client.get("/api/sessions/nope")
    assert r.status_code == 404 and r.json() == {"message": "Session not found", "error": "Not Found",
                                                 "statusCode": 404}
    for name in ("nope", "old"):
        r = client.get(f"/api/{name}/chats")
        assert r.status_code == 404 and r.json()["message"].startswith(f"We didn't find a session with name '{name}'")
    r = client.get(msgs_url("1@c.us", "pairing"))
    assert r.status_code == 422 and r.json() == {
        "error": "Session status is not as expected. Try again later or restart the session",
        "session": "pairing", "status": "SCAN_QR_CODE", "expected": ["WORKING"]}
    try:
        assert client.post("/_sim/sessions/pairing/status", json={"status": "WORKING"}).status_code == 200
        assert client.get("/api/pairing/chats").status_code == 200
        assert client.post("/_sim/sessions/pairing/status", json={"status": "BOGUS"}).status_code == 400
    finally:
        sim.set_status("pairing", "SCAN_QR_CODE")
    assert client.get("/api/pairing/lids").status_code == 422
    v = client.get("/api/server/version").json()
    assert v["engine"] == "GOWS" and v["version"]


def test_bad_queries_are_400(client: httpx.Client) -> None:
    for url, params in (("/api/demo/chats", {"sortBy": "messageTimestamp"}),
                        ("/api/demo/chats", {"sortOrder": "up"}),
                        (msgs_url("1@c.us"), {"sortBy": "id"}),
                        (msgs_url("1@c.us"), {"limit": "ten"}),
                        (msgs_url("1@c.us"), {"filter.timestamp.gte": "yesterday"})):
        r = client.get(url, params=params)
        assert r.status_code == 400, (url, params)
        body = r.json()
        assert body["error"] == "Bad Request" and body["statusCode"] == 400 and isinstance(body["message"], list)
    r = client.get("/api/demo/nothing-here")
    assert r.status_code == 404 and r.json()["statusCode"] == 404


def test_lids_endpoints(client: httpx.Client, sim: SimulatorHandle, demo: list[SimChat]) -> None:
    lids = sim.state.dataset.sessions["demo"].lids
    count = client.get("/api/demo/lids/count").json()["count"]
    assert count == len(lids) > 0
    assert len(client.get("/api/demo/lids").json()) == min(100, count)  # default limit 100
    listed: list[dict] = []
    offset = 0
    while page := client.get("/api/demo/lids", params={"limit": 9, "offset": offset}).json():
        listed += page
        offset += 9
    assert {d["lid"]: d["pn"] for d in listed} == {f"{k}@lid": f"{v}@c.us" for k, v in lids.items()}
    lid, phone = next(iter(lids.items()))
    assert client.get(f"/api/demo/lids/{lid}%40lid").json() == {"lid": f"{lid}@lid", "pn": f"{phone}@c.us"}
    assert client.get(f"/api/demo/lids/{lid}").json()["pn"] == f"{phone}@c.us"
    unknown = next(c for c in demo if c.kind == LID_UNKNOWN).id
    assert client.get(f"/api/demo/lids/{quote(unknown)}").json() == {"lid": unknown, "pn": None}
    assert client.get(f"/api/demo/lids/pn/{phone}%40c.us").json() == {"lid": f"{lid}@lid", "pn": f"{phone}@c.us"}
    assert client.get("/api/demo/lids/pn/5500000000000").json() == {"lid": None, "pn": "5500000000000@c.us"}


def test_stats_count_requests_by_kind(client: httpx.Client) -> None:
    assert client.post("/_sim/reset-stats").status_code == 200
    client.get("/api/sessions")
    client.get("/api/sessions/demo")
    client.get("/api/demo/chats", params={"limit": 3})
    for _ in range(4):
        client.get(msgs_url("1@c.us"))
    client.get("/api/demo/lids/count")
    client.get("/api/server/version")
    client.get("/api/demo/chats", params={"sortBy": "bad"})
    stats = client.get("/_sim/stats").json()
    assert {k: stats[k] for k in ("sessions", "chats", "messages", "lids", "other", "total")} == {
        "sessions": 2, "chats": 2, "messages": 4, "lids": 1, "other": 1, "total": 10}
    assert stats["by_status"] == {"200": 9, "400": 1}
    assert stats["messages_by_chat"] == {"1@c.us": 4}
    assert stats["control"] >= 1


def test_truth_route_and_latency_fault(client: httpx.Client, sim: SimulatorHandle, server_waits: ServerWaits) -> None:
    params = {"session": "acme", "window_start": ANCHOR - 30 * 86400, "window_end": ANCHOR,
              "timeout_minutes": 30, "plan_time": ANCHOR}
    got = client.get("/_sim/truth", params=params).json()
    assert got == sim.truth("acme", window_start=ANCHOR - 30 * 86400, window_end=ANCHOR, plan_time=ANCHOR)
    assert got["tenant_id"] == "t-acme" and got["messages"]
    try:
        client.post("/_sim/faults", json={"latency_ms": 150})
        assert client.get("/api/sessions").status_code == 200
        assert server_waits.sleeps == [0.15]  # the latency fault delays the answer by 150 ms
    finally:
        client.post("/_sim/faults", json={"latency_ms": 0, "jitter_ms": 0, "max_concurrent": None})
    assert client.get("/api/sessions").status_code == 200
    assert server_waits.sleeps == [0.15], "no delay once the fault is cleared"
