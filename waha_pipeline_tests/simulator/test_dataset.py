"""The generated history has the shape the importer must survive (issue requirements, SPEC 6.2/6.8)."""

from __future__ import annotations

from collections import Counter

import pytest

from waha_pipeline.simulator import Dataset, DatasetSpec, SessionSpec, build_dataset, ground_truth
from waha_pipeline.simulator.models import (
    NO_TIMESTAMP,
    ALL_KINDS,
    CONTENT_TYPES,
    DEFECTS,
    DIRECT_KINDS,
    LID_DUP,
    LID_MAPPED,
    LID_UNKNOWN,
    ONE_TO_ONE_KINDS,
    SimSession,
)

from .conftest import ANCHOR
from .wire import wire_time

DAY = 86400


def _served(session: SimSession) -> list:
    return [e for c in session.chats for e in c.entries if not e.hidden]


def test_same_spec_and_anchor_give_identical_bytes() -> None:
    spec = DatasetSpec(seed=5, chats=60, target_messages=400)
    a, b = build_dataset(spec, anchor=ANCHOR), build_dataset(spec, anchor=ANCHOR)
    dump = lambda ds: [(c.id, c.name, [(e.ts, e.seq, e.blob) for e in c.entries]) for c in ds.sessions["demo"].chats]  # noqa: E731
    assert dump(a) == dump(b)
    assert a.sessions["demo"].lids == b.sessions["demo"].lids
    assert dump(build_dataset(DatasetSpec(seed=6, chats=60, target_messages=400), anchor=ANCHOR)) != dump(a)
    shifted = build_dataset(spec, anchor=ANCHOR + 3600)
    assert max(e.ts for e in _served(shifted.sessions["demo"])) <= ANCHOR + 3600


def test_default_spec_sizes(default_dataset: Dataset) -> None:
    session = default_dataset.sessions["demo"]
    counts = session.counts()
    assert counts["chats"] == 1176
    assert abs(counts["served_messages"] - 5700) <= 0.05 * 5700
    for kind in ALL_KINDS:
        assert counts[f"chats_{kind}"] >= 1, kind
    assert counts["chats_direct"] > counts["chats"] / 2  # most chats are plain @c.us
    assert counts["hidden_reactions"] > 0
    assert all(e.ts <= ANCHOR for c in session.chats for e in c.entries)


def test_heavy_tail_and_spread_over_history(default_dataset: Dataset) -> None:
    session = default_dataset.sessions["demo"]
    per_chat = sorted((sum(1 for e in c.entries if not e.hidden) for c in session.chats), reverse=True)
    assert per_chat[0] >= 200 and sum(1 for n in per_chat if n >= 100) >= 3
    assert sum(1 for n in per_chat if n <= 3) / len(per_chat) >= 0.5
    stamps = [e.ts for e in _served(session)]
    recent = sum(1 for t in stamps if t >= ANCHOR - 30 * DAY) / len(stamps)
    old = sum(1 for t in stamps if t < ANCHOR - 180 * DAY) / len(stamps)
    assert recent >= 0.15 and old >= 0.2, (recent, old)


def test_sessions_per_contact_near_two_and_a_half(default_dataset: Dataset) -> None:
    truth = ground_truth(default_dataset, "demo", window_start=None, window_end=ANCHOR, timeout_minutes=30)
    ratio = len(truth["sessions"]) / len(truth["contacts"])
    assert 2.0 <= ratio <= 3.0, ratio


def test_traps_are_present(default_dataset: Dataset) -> None:
    session = default_dataset.sessions["demo"]
    served = _served(session)
    assert {e.defect for e in served if e.defect} == {*DEFECTS, NO_TIMESTAMP}  # GOWS zero time: no time anywhere
    malformed_chats = {c.id for c in session.chats for e in c.entries if e.defect in DEFECTS}
    for chat in session.chats:
        if chat.id in malformed_chats:
            assert chat.kind in ONE_TO_ONE_KINDS
            assert any(e.defect is None and not e.hidden for e in chat.entries)
    ids = Counter(e.external_id for e in served if e.external_id)
    assert any(n == 2 for n in ids.values()), "a duplicated message id"
    assert {e.from_me for e in served} == {True, False}
    shared_second = 0
    one_to_one_gaps: set[int] = set()
    for chat in session.chats:
        stamps = [e.ts for e in chat.entries if not e.hidden and e.defect is None]
        shared_second += len(stamps) - len(set(stamps))
        if chat.kind in ONE_TO_ONE_KINDS:
            one_to_one_gaps.update(b - a for a, b in zip(stamps, stamps[1:]))
    assert shared_second >= 20
    assert {1800, 1801} <= one_to_one_gaps
    assert {e.content_type for e in served} == set(CONTENT_TYPES)


def test_chat_id_kinds_and_lid_map(default_dataset: Dataset) -> None:
    session = default_dataset.sessions["demo"]
    direct_phones = {c.id.split("@")[0] for c in session.chats if c.kind in DIRECT_KINDS}
    for chat in session.chats:
        digits = chat.id.split("@")[0]
        if chat.kind == LID_MAPPED:
            assert session.lids[digits] not in direct_phones
        elif chat.kind == LID_DUP:
            assert session.lids[digits] in direct_phones
        elif chat.kind == LID_UNKNOWN:
            assert digits not in session.lids
    wires = [c.wire_id for c in session.chats]
    assert any(isinstance(w, dict) and w["_serialized"].endswith("@c.us") for w in wires)
    assert any(isinstance(w, str) and w.endswith("@s.whatsapp.net") for w in wires)
    for suffix in ("@g.us", "@newsletter", "@lid", "@c.us"):
        assert any(isinstance(w, str) and w.endswith(suffix) for w in wires), suffix
    assert "status@broadcast" in wires
    assert any(isinstance(w, str) and w.endswith("@broadcast") and w != "status@broadcast" for w in wires)
    names = [c.name for c in session.chats if c.kind in DIRECT_KINDS]
    assert None in names and any(n and n.startswith("+55 ") for n in names)


def test_wire_messages_carry_type_only_in_data(default_dataset: Dataset) -> None:
    session = default_dataset.sessions["demo"]
    media = {"image": "image", "video": "video", "audio": "audio", "voice": "ptt", "document": "document",
             "sticker": "sticker"}
    seen: set[str] = set()
    for chat in session.chats:
        for e in chat.entries:
            if e.hidden or e.defect or e.row:
                continue
            raw = e.raw()
            assert raw is not None and "type" not in raw and "mimetype" not in raw
            info = raw["_data"]["Info"]
            assert raw["id"] == e.external_id and wire_time(raw) == e.ts and raw["fromMe"] is e.from_me
            if e.content_type in media:
                assert raw["hasMedia"] is True and info["Type"] == "media" and info["MediaType"] == media[e.content_type]
            else:
                assert raw["hasMedia"] is False
            if e.content_type == "location":
                assert isinstance(raw["location"]["latitude"], str)
            if e.content_type == "contact":
                assert raw["vCards"] and raw["vCards"][0].startswith("BEGIN:VCARD")
            else:
                assert raw["vCards"] == []
            if chat.kind == "group":
                assert raw["participant"] and raw["id"].endswith("_" + raw["participant"])
                assert raw["id"].count("_") >= 3
            if not e.from_me:
                assert info["PushName"]
            seen.add(e.content_type)
    assert seen == set(CONTENT_TYPES)


def test_several_sessions_each_deterministic() -> None:
    spec = DatasetSpec(seed=3, chats=30, target_messages=150,
                       sessions=(SessionSpec("demo"), SessionSpec("b", tenant_id="t-b", chats=20, target_messages=80)))
    ds = build_dataset(spec, anchor=ANCHOR)
    assert set(ds.sessions) == {"demo", "b"}
    assert ds.sessions["b"].tenant_id == "t-b" and ds.sessions["demo"].tenant_id is None
    assert len(ds.sessions["b"].chats) == 20
    assert {c.id for c in ds.sessions["demo"].chats}.isdisjoint({c.id for c in ds.sessions["b"].chats} - {"status@broadcast"})
    alone = build_dataset(DatasetSpec(seed=3, chats=30, target_messages=150), anchor=ANCHOR)
    assert [c.id for c in alone.sessions["demo"].chats] == [c.id for c in ds.sessions["demo"].chats]
    with pytest.raises(ValueError):
        build_dataset(DatasetSpec(chats=5), anchor=ANCHOR)
