"""The simulator's ground truth applies SPEC 6 rules; pinned on a hand-built dataset with known answers."""

from __future__ import annotations

import orjson

from waha_pipeline.simulator import Dataset, DatasetSpec, ground_truth
from waha_pipeline.simulator.models import (
    DIRECT,
    DIRECT_SWA,
    GROUP,
    LID_DUP,
    LID_UNKNOWN,
    STATUS,
    SimChat,
    SimSession,
    StoredMessage,
)
from waha_pipeline.simulator.truth import is_just_the_number

T0 = 1_700_000_000
_seq = iter(range(1, 10**6))


def msg(ts: int, ext: str | None, from_me: bool = False, *, push: str | None = "Zé", ctype: str = "text",
        defect: str | None = None, hidden: bool = False) -> StoredMessage:
    blob = None if hidden else orjson.dumps({"id": ext, "timestamp": ts})
    return StoredMessage(ts=ts, sort_id=ext or "", seq=next(_seq), from_me=from_me, blob=blob, external_id=ext,
                         body="b", content_type=ctype, push_name=None if from_me else push, participant=None,
                         defect=defect)


def chat(cid: str, kind: str, name: str | None, *entries: StoredMessage) -> SimChat:
    c = SimChat(id=cid, kind=kind, wire_id=cid, name=name, entries=list(entries))
    c.finalize()
    return c


def dataset(*chats: SimChat, lids: dict[str, str] | None = None) -> Dataset:
    sess = SimSession(name="s", status="WORKING", tenant_id=None, me_phone="1", me_lid="2", me_push_name="Me",
                      chats=list(chats), lids=lids or {})
    return Dataset(spec=DatasetSpec(), anchor=T0 + 10**6, sessions={"s": sess})


def truth(ds: Dataset, **kw: object) -> dict:
    kw.setdefault("window_start", None)
    kw.setdefault("window_end", T0 + 10**6)
    return ground_truth(ds, "s", **kw)  # type: ignore[arg-type]


def test_just_the_number() -> None:
    assert is_just_the_number("+55 11 91234-5678") and is_just_the_number("(11) 91234-5678")
    assert is_just_the_number(None) and is_just_the_number("  ")
    assert not is_just_the_number("Maria 11") and not is_just_the_number("Loja")


def test_session_split_is_strictly_greater_than_timeout() -> None:
    ds = dataset(chat("5511@c.us", DIRECT, "Ana",
                      msg(T0, "a"), msg(T0 + 1800, "b", True), msg(T0 + 3601, "c"), msg(T0 + 3601, "d", True)))
    got = truth(ds, timeout_minutes=30)
    assert [(s["started_at"], s["ended_at"], s["message_count"]) for s in got["sessions"]] == [
        (T0, T0 + 1800, 2), (T0 + 3601, T0 + 3601, 2)]
    first = got["sessions"][0]
    assert (first["messages_from_contact"], first["messages_from_agent"]) == (1, 1)
    assert len(truth(ds, timeout_minutes=31)["sessions"]) == 1


def test_window_is_inclusive_and_status_follows_plan_time() -> None:
    ds = dataset(chat("5511@c.us", DIRECT, "Ana", msg(T0, "a"), msg(T0 + 100, "b"), msg(T0 + 200, "c")))
    got = truth(ds, window_start=T0 + 100, window_end=T0 + 200, plan_time=T0 + 200 + 1800)
    assert [m["external_id"] for m in got["messages"]] == ["b", "c"]
    assert got["sessions"][0]["status"] == "open"  # ended_at == plan_time - timeout is not "<"
    got = truth(ds, window_start=T0 + 100, window_end=T0 + 200, plan_time=T0 + 200 + 1801)
    assert got["sessions"][0]["status"] == "closed"
    assert truth(ds, window_start=T0 + 201, window_end=T0 + 300)["contacts"] == []


def test_lid_chat_with_known_phone_is_the_phone_contact() -> None:
    ds = dataset(
        chat("5511@c.us", DIRECT, "+55 11", msg(T0, "a", push="Old")),
        chat("999@lid", LID_DUP, "Lid Name", msg(T0 + 600, "b", push="New"), msg(T0 + 700, "c", True)),
        chat("888@lid", LID_UNKNOWN, None, msg(T0, "d", push="Lu")),
        lids={"999": "5511", "777": "5522"},
    )
    got = truth(ds)
    assert got["contacts"] == [
        {"phone": None, "lid": "888", "group_id": None, "name": "Lu"},
        {"phone": "5511", "lid": "999", "group_id": None, "name": "Lid Name"},
    ]
    merged = [s for s in got["sessions"] if s["contact"]["phone"] == "5511"]
    assert len(merged) == 1 and merged[0]["message_count"] == 3
    assert {m["chat_id"] for m in got["messages"]} == {"5511@c.us", "999@lid", "888@lid"}


def test_name_preference_and_push_fallback() -> None:
    both_named = dataset(chat("5511@c.us", DIRECT_SWA, "Cus Name", msg(T0, "a")),
                         chat("999@lid", LID_DUP, "Lid Name", msg(T0, "b")), lids={"999": "5511"})
    assert truth(both_named)["contacts"][0]["name"] == "Cus Name"
    # latest inbound push name wins (ties broken by external id); outbound messages never name the contact
    pushes = dataset(chat("5511@c.us", DIRECT, None, msg(T0, "a", push="Early"), msg(T0 + 5, "c", push="Late"),
                          msg(T0 + 5, "b", push="Tie"), msg(T0 + 9, "z", True)))
    assert truth(pushes)["contacts"][0]["name"] == "Late"
    only_me = dataset(chat("5511@c.us", DIRECT, "(11) 9999-0000", msg(T0, "a", True)))
    assert truth(only_me)["contacts"][0]["name"] is None


def test_rejects_duplicates_hidden_and_skipped_chats() -> None:
    ds = dataset(
        chat("5511@c.us", DIRECT, "Ana", msg(T0, "a"), msg(T0, "a"), msg(T0 + 1, None, defect="missing_id"),
             msg(T0 + 2, "x", defect="string_timestamp"), msg(T0 + 3, "r", hidden=True)),
        chat("status@broadcast", STATUS, None, msg(T0, "s")),
        chat("1203@g.us", GROUP, "Grupo", msg(T0, "g"), msg(T0 + 4000, "g2")),
    )
    got = truth(ds)
    assert [m["external_id"] for m in got["messages"]] == ["a"]
    assert got["rejects"] == [{"chat_id": "5511@c.us", "external_id": None, "defect": "missing_id"},
                              {"chat_id": "5511@c.us", "external_id": "x", "defect": "string_timestamp"}]
    assert got["skipped_chats"] == {"status": 1, "group": 1}
    with_groups = truth(ds, include_groups=True)
    assert {"phone": None, "lid": None, "group_id": "1203@g.us", "name": "Grupo"} in with_groups["contacts"]
    assert sum(1 for s in with_groups["sessions"] if s["contact"]["group_id"]) == 2
