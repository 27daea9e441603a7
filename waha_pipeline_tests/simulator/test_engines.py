"""Engine profiles over real loopback HTTP: each engine's message objects, paging and quirks, and a truth that
matches what a reader of the wire (written from WAHA's material, tests/simulator/wire.py) finds."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from waha_pipeline.simulator import DatasetSpec, SessionSpec, SimulatorHandle, build_dataset, run_in_thread
from waha_pipeline.simulator.models import (
    DIRECT_KINDS, GROUP, LID_ALT, NO_TIMESTAMP, ONE_TO_ONE_KINDS, SimChat, chat_listed,
)
from waha_pipeline.simulator.engines import THUMBNAIL_B64, ZERO_GO_TIME

from .conftest import ANCHOR
from .wire import is_good, wire_time

BURST = 25  # rows per hidden burst: more than two pages of LIMIT
LIMIT = 10


def spec(engine: str, **kw: object) -> DatasetSpec:
    return DatasetSpec(seed=21, chats=90, target_messages=1500, engine=engine, hidden_burst_rows=BURST,
                       sessions=(SessionSpec("demo"),), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["gows", "noweb", "webjs"])
def engine_sim(request: pytest.FixtureRequest) -> Iterator[SimulatorHandle]:
    with run_in_thread(spec(request.param), anchor=ANCHOR) as handle:
        yield handle


def msgs_url(chat_id: str) -> str:
    return f"/api/demo/chats/{quote(chat_id, safe='')}/messages"


def get(h: SimulatorHandle, path: str, **params: object) -> list[dict]:
    with httpx.Client(base_url=h.base_url, timeout=10) as c:
        r = c.get(path, params={"downloadMedia": "false", **params})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def page_window(h: SimulatorHandle, chat: SimChat, limit: int, **params: object) -> tuple[list[dict], list[int]]:
    """Every page over the stored rows of the window (an empty page is not the end)."""
    _, lo, hi = chat.window(params.get("filter.timestamp.gte"), params.get("filter.timestamp.lte"), None)  # type: ignore[arg-type]
    items: list[dict] = []
    sizes: list[int] = []
    offset = 0
    with httpx.Client(base_url=h.base_url, timeout=10) as c:
        while offset < hi - lo or not sizes:
            r = c.get(msgs_url(chat.id), params={"downloadMedia": "false", "limit": limit, "offset": offset, **params})
            assert r.status_code == 200, r.text
            page = r.json()
            sizes.append(len(page))
            items += page
            offset += limit
    return items, sizes


def non_message_reason(m: dict) -> str | None:
    """What a reader of WAHA's material calls a row that is not a message (SPEC 6.5)."""
    data = m.get("_data") or {}
    if data.get("type") in ("e2e_notification", "notification_template", "gp2", "call_log"):
        return "system_notice"
    message = data.get("message") or {}
    if "protocolMessage" in message:
        return "protocol"
    if "reactionMessage" in message:
        return "reaction"
    return None


def engine_of(h: SimulatorHandle) -> str:
    return h.state.dataset.spec.engine


def test_message_shapes_per_engine(engine_sim: SimulatorHandle) -> None:
    engine = engine_of(engine_sim)
    chats = engine_sim.state.dataset.sessions["demo"].chats
    seen_types: set[str] = set()
    for chat in chats:
        for e in chat.entries:
            if e.hidden or e.row or e.defect:
                continue
            raw = e.raw()
            assert raw is not None and raw["id"] == e.external_id and wire_time(raw) == e.ts
            assert raw["ackName"] in ("SERVER", "DEVICE", "READ", "PLAYED") and isinstance(raw["ack"], int)
            data = raw["_data"]
            if engine == "gows":
                assert data["Info"]["ID"] in raw["id"] and "Message" in data
            elif engine == "noweb":
                key = data["key"]
                assert set(key) >= {"remoteJid", "fromMe", "id"} and key["id"] in raw["id"]
                assert key["fromMe"] is e.from_me and "message" in data and "messageTimestamp" in data
                assert not key["remoteJid"].endswith("@c.us")  # engine JID form
                if chat.kind == GROUP:
                    assert key["participant"].endswith(("@s.whatsapp.net", "@lid"))
            else:
                rid = data["id"]
                assert rid["_serialized"] == raw["id"] and rid["remote"] == chat.id and rid["fromMe"] is e.from_me
                assert data["t"] == e.ts and isinstance(data["type"], str)
                if chat.kind == GROUP and not e.from_me:
                    assert data["author"] == e.participant
                seen_types.add(data["type"])
            if chat.kind == GROUP:
                assert raw["id"].endswith("_" + e.participant)  # type: ignore[operator]
                assert raw["participant"] == e.participant
    if engine == "webjs":
        assert {"chat", "image", "ptt", "location", "vcard"} <= seen_types


def test_webjs_bodies_thumbnails_and_odd_messages() -> None:
    ds = build_dataset(spec("webjs"), anchor=ANCHOR)
    entries = [e for c in ds.sessions["demo"].chats for e in c.entries if not e.hidden and not e.row and not e.defect]
    kinds: dict[str, int] = {}
    for e in entries:
        raw = e.raw()
        assert raw is not None
        data = raw["_data"]
        if data["type"] == "location":
            assert raw["body"] == THUMBNAIL_B64 and e.body is None and raw["location"]["latitude"]
            base64.b64decode(raw["body"], validate=True)
            kinds["location"] = kinds.get("location", 0) + 1
        elif data["type"] == "image" and "directPath" not in data:
            assert raw["body"] == THUMBNAIL_B64 and raw["hasMedia"] is False and e.content_type == "image"
            assert data.get("caption") == e.body  # the caption, never the thumbnail, is the truth's body
            kinds["thumb_image"] = kinds.get("thumb_image", 0) + 1
        elif data["type"] in ("revoked", "ciphertext"):
            assert raw["body"] == "" and e.content_type == "other" and e.body is None
            kinds[data["type"]] = kinds.get(data["type"], 0) + 1
        elif data["type"] == "image":
            assert raw["hasMedia"] is True and raw["body"] == (e.body or "")
    assert set(kinds) == {"location", "thumb_image", "revoked", "ciphertext"}, kinds


def test_legacy_webjs_names_the_group_sender_only_in_data_author() -> None:
    ds = build_dataset(spec("webjs", legacy=True), anchor=ANCHOR)
    group = next(c for c in ds.sessions["demo"].chats if c.kind == GROUP)
    raws = [e.raw() for e in group.entries if not e.hidden and not e.row and not e.defect]
    assert raws and all("participant" not in r for r in raws)  # type: ignore[operator]
    assert all(r["_data"]["author"] for r in raws if not r["fromMe"])  # type: ignore[index]


def test_time_quirks_per_engine() -> None:
    gows = build_dataset(spec("gows"), anchor=ANCHOR).sessions["demo"]
    nulls = [e.raw() for c in gows.chats for e in c.entries if not e.hidden and e.blob and b'"timestamp":null' in e.blob]
    with_info = [r for r in nulls if r["_data"]["Info"]["Timestamp"] != ZERO_GO_TIME]  # type: ignore[index]
    zero = [e for c in gows.chats for e in c.entries if e.defect == NO_TIMESTAMP]
    assert with_info and all(wire_time(r) is not None for r in with_info)  # type: ignore[arg-type]
    assert zero and all(wire_time(e.raw()) is None for e in zero)  # type: ignore[arg-type]

    noweb = build_dataset(spec("noweb"), anchor=ANCHOR).sessions["demo"]
    longs = [e for c in noweb.chats for e in c.entries if e.blob and b'"unsigned":true' in e.blob and not e.row]
    assert longs
    for e in longs:
        raw = e.raw()
        assert raw["timestamp"] == raw["_data"]["messageTimestamp"] == {"low": e.ts, "high": 0, "unsigned": True}  # type: ignore[index]

    for defect_free in (gows, noweb):  # a time defect leaves no time in any field
        for e in (e for c in defect_free.chats for e in c.entries if e.defect in ("missing_timestamp",
                                                                                   "string_timestamp")):
            assert wire_time(e.raw()) is None  # type: ignore[arg-type]


def test_pages_slice_first_then_drop_rows_so_an_empty_page_is_not_the_end(engine_sim: SimulatorHandle) -> None:
    engine = engine_of(engine_sim)
    chats = engine_sim.state.dataset.sessions["demo"].chats
    burst_chats = [c for c in chats if sum(e.hidden for e in c.entries) >= BURST]
    assert len(burst_chats) == 2
    for chat in burst_chats:
        orders = ["desc"] if engine == "webjs" else ["asc", "desc"]
        for order in orders:
            items, sizes = page_window(engine_sim, chat, LIMIT, sortOrder=order)
            empty_inside = [i for i, n in enumerate(sizes) if n == 0 and any(sizes[i + 1:])]
            assert empty_inside, (order, sizes)  # an empty page, and messages after it
            served = [e for e in chat.entries if not e.hidden]
            assert len(items) == len(served)
            assert {m.get("id") for m in items} == {e.external_id for e in served}


def test_webjs_newest_first_whatever_sort_order_and_gte_drops_timestamp() -> None:
    with run_in_thread(spec("webjs"), anchor=ANCHOR) as h:
        chat = max((c for c in h.state.dataset.sessions["demo"].chats if c.kind in DIRECT_KINDS),
                   key=lambda c: len(c.entries))
        for order in ("asc", "desc", None):
            params = {"limit": 50} if order is None else {"limit": 50, "sortOrder": order}
            page = get(h, msgs_url(chat.id), **params)
            times = [m["_data"]["t"] for m in page]
            assert times == sorted(times, reverse=True) and len(page) > 5
            assert all("timestamp" in m for m in page)
        gte = min(e.ts for e in chat.entries)
        page = get(h, msgs_url(chat.id), limit=50, **{"filter.timestamp.gte": gte})
        assert page and all("timestamp" not in m for m in page)
        assert all(wire_time(m) == m["_data"]["t"] for m in page if is_good(m))


def test_version_quirks_ignore_offset_and_lte() -> None:
    with run_in_thread(spec("webjs", ignore_offset=True, ignore_lte=True), anchor=ANCHOR) as h:
        chat = max((c for c in h.state.dataset.sessions["demo"].chats if c.kind in DIRECT_KINDS),
                   key=lambda c: sum(not e.hidden for e in c.entries))
        first = get(h, msgs_url(chat.id), limit=5, offset=0)
        assert get(h, msgs_url(chat.id), limit=5, offset=5) == first  # offset ignored: the same page again
        served = sorted((e for e in chat.entries if not e.hidden), key=lambda e: e.ts)
        lte = served[len(served) // 2].ts
        page = get(h, msgs_url(chat.id), limit=5, **{"filter.timestamp.lte": lte})
        assert any(m["_data"]["t"] > lte for m in page)  # lte ignored


def test_chat_lists_per_engine(engine_sim: SimulatorHandle) -> None:
    engine = engine_of(engine_sim)
    chats = engine_sim.state.dataset.sessions["demo"].chats
    listed = get(engine_sim, "/api/demo/chats")
    assert len(listed) == len(chats)
    if engine == "gows":
        ids = [c["id"]["_serialized"] if isinstance(c["id"], dict) else c["id"] for c in listed]
        assert ids == sorted(ids)
        return
    stamp_key = "timestamp" if engine == "webjs" else "conversationTimestamp"
    stamps = [c[stamp_key] for c in listed]
    known = [t for t in stamps if t is not None]
    assert known == sorted(known, reverse=True) and stamps[: len(known)] == known  # by activity, nulls last
    by_id = {c.id: c for c in chats}
    quirks = {q: 0 for q in ("missing", "stale")}
    for c in listed:
        if engine == "webjs":
            assert set(c["id"]) == {"server", "user", "_serialized"} and "conversationTimestamp" not in c
            chat = by_id[c["id"]["_serialized"]]
        else:
            assert not c["id"].endswith("@c.us")
            chat = by_id[c["id"].replace("@s.whatsapp.net", "@c.us")]
        true_ts = chat.conversation_timestamp
        if true_ts is not None and c[stamp_key] is None:
            quirks["missing"] += 1
        elif true_ts is not None and c[stamp_key] < true_ts:
            quirks["stale"] += 1
    assert quirks["missing"] and quirks["stale"], quirks


def test_legacy_noweb_lists_only_chats_with_a_timestamp_and_serves_protocol_rows() -> None:
    with run_in_thread(spec("noweb", legacy=True), anchor=ANCHOR) as h:
        ds = h.state.dataset
        chats = ds.sessions["demo"].chats
        listed = get(h, "/api/demo/chats")
        assert all(c["conversationTimestamp"] is not None for c in listed)
        assert len(listed) == sum(chat_listed(c, ds.spec) for c in chats) < len(chats)
        truth = h.truth("demo")
        assert truth["skipped_chats"]["unlisted"] == len(chats) - len(listed)
        assert truth["skipped_messages"]["protocol"] > 0


@pytest.mark.parametrize("engine,legacy", [("gows", False), ("noweb", False), ("noweb", True), ("webjs", False)])
def test_truth_matches_what_the_wire_holds(engine: str, legacy: bool) -> None:
    """Page every importable chat over HTTP in a window and classify each row from its wire form: the truth's
    messages, rejects and skipped counts are exactly what is there."""
    gte, lte = ANCHOR - 200 * 86400, ANCHOR
    with run_in_thread(spec(engine, legacy=legacy), anchor=ANCHOR) as h:
        ds = h.state.dataset
        truth = h.truth("demo", window_start=gte, window_end=lte)
        want_ids = {m["external_id"] for m in truth["messages"]}
        want_at = {m["external_id"]: m["sent_at"] for m in truth["messages"]}
        got_ids: set[str] = set()
        rejects = 0
        skipped: dict[str, int] = {}
        for chat in ds.sessions["demo"].chats:
            if chat.kind not in ONE_TO_ONE_KINDS or not chat_listed(chat, ds.spec):
                continue
            items, _ = page_window(h, chat, 100, **{"filter.timestamp.gte": gte, "filter.timestamp.lte": lte})
            for m in items:
                reason = non_message_reason(m)
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                elif is_good(m):
                    assert want_at[m["id"]] == wire_time(m)
                    got_ids.add(m["id"])
                else:
                    rejects += 1
        assert got_ids == want_ids
        assert rejects == len(truth["rejects"]) > 0
        assert skipped == truth["skipped_messages"]
        if engine == "webjs":
            assert skipped.get("system_notice", 0) > 0
        phones = {c["phone"] for c in truth["contacts"]}
        alt = [c for c in ds.sessions["demo"].chats if c.kind == LID_ALT]
        assert alt
        for chat in alt:
            lid = chat.id.split("@")[0]
            assert lid not in ds.sessions["demo"].lids  # /lids does not know it
            if engine != "webjs" and any(m["chat_id"] == chat.id for m in truth["messages"]):
                assert chat.alt_phone in phones  # the phone from SenderAlt / remoteJidAlt makes the contact
        merged = [c for c in alt if any(d.kind in DIRECT_KINDS and d.id == f"{c.alt_phone}@c.us"
                                        for d in ds.sessions["demo"].chats)]
        assert merged, "a lid chat whose phone also has a @c.us chat"
        assert len(phones - {None}) == sum(1 for c in truth["contacts"] if c["phone"])  # one contact per phone
        if engine != "webjs":
            by_phone = {c["phone"]: c for c in truth["contacts"] if c["phone"]}
            for chat in merged:
                if any(m["chat_id"] == chat.id for m in truth["messages"]):
                    assert by_phone[chat.alt_phone]["lid"] == chat.id.split("@")[0]
