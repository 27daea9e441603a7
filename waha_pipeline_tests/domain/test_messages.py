"""Pins message mapping: content types for the GOWS, NOWEB and WEBJS `_data` shapes, every reject reason (SPEC 6.8),
dedupe by external id, the inclusive window, sent_at taken from WAHA, sender and push name."""

from __future__ import annotations

from typing import Any

import orjson
import pandas as pd
import pytest

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import MESSAGE_COLUMNS, REJECT_COLUMNS
from waha_pipeline.domain.messages import MappedMessages, content_type, map_messages, parse_timestamp

# ---------------------------------------------------------------------------------------------------------------
# FIXTURES

CH = "channel-1"
CHAT = "5511912345678@c.us"
GROUP = "120363041234567890@g.us"
T = 1_760_000_000


def msg(external_id: Any = "false_5511912345678@c.us_A1", ts: Any = T, **extra: Any) -> dict[str, Any]:
    base = {"id": external_id, "timestamp": ts, "fromMe": False, "body": "oi", "hasMedia": False}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not ...}


def fetched(*rows: tuple[str, Any]) -> pd.DataFrame:
    payloads = [p if isinstance(p, str) else orjson.dumps(p).decode() for _, p in rows]
    return pd.DataFrame({"chat_id": pd.array([c for c, _ in rows], dtype="string"), "payload": payloads})


def mapped(*rows: tuple[str, Any], start: int | None = None, end: int = T + 1000) -> MappedMessages:
    return map_messages(fetched(*rows), channel_id=CH, window_start=start, window_end=end)


def run(*rows: tuple[str, Any], start: int | None = None, end: int = T + 1000):
    """(messages, rejects, valid messages left out by the window)."""
    result = mapped(*rows, start=start, end=end)
    return result.messages, result.rejects, result.dropped_outside_window


# ---------------------------------------------------------------------------------------------------------------
# TESTS: content types

GOWS = [
    ("text conversation", {"Info": {"Type": "text"}, "Message": {"conversation": "oi"}}, "text"),
    ("extended text", {"Info": {"Type": "text"}, "Message": {"extendedTextMessage": {"text": "oi"}}}, "text"),
    ("info text only", {"Info": {"Type": "text"}}, "text"),
    ("image by MediaType", {"Info": {"Type": "media", "MediaType": "image"}}, "image"),
    ("image by key", {"Info": {"Type": "media"}, "Message": {"imageMessage": {"mimetype": "image/jpeg"}}}, "image"),
    ("video", {"Info": {"Type": "media", "MediaType": "video"}}, "video"),
    ("audio", {"Info": {"Type": "media", "MediaType": "audio"}}, "audio"),
    ("ptt", {"Info": {"Type": "media", "MediaType": "ptt"}}, "voice"),
    ("audio ptt key", {"Message": {"audioMessage": {"ptt": True}}}, "voice"),
    ("audio not ptt key", {"Message": {"audioMessage": {"ptt": False}}}, "audio"),
    ("audio PTT key (whatsmeow spelling)", {"Message": {"audioMessage": {"PTT": True}}}, "voice"),
    ("audio key + MediaType ptt", {"Info": {"MediaType": "ptt"}, "Message": {"audioMessage": {}}}, "voice"),
    ("document", {"Info": {"Type": "media", "MediaType": "document"}}, "document"),
    ("sticker", {"Info": {"Type": "media", "MediaType": "sticker"}}, "sticker"),
    ("location key", {"Message": {"locationMessage": {"degreesLatitude": 1}}}, "location"),
    ("contact key", {"Message": {"contactMessage": {"vcard": "BEGIN:VCARD"}}}, "contact"),
    ("contacts array", {"Message": {"contactsArrayMessage": {}}}, "contact"),
    ("meta key first", {"Message": {"messageContextInfo": {}, "stickerMessage": {}}}, "sticker"),
    ("ephemeral wrapper", {"Message": {"ephemeralMessage": {"message": {"imageMessage": {}}}}}, "image"),
    ("view once wrapper", {"Message": {"viewOnceMessageV2": {"message": {"videoMessage": {}}}}}, "video"),
    ("doc with caption", {"Message": {"documentWithCaptionMessage": {"message": {"documentMessage": {}}}}}, "document"),
    ("reaction", {"Info": {"Type": "reaction"}, "Message": {"reactionMessage": {"text": "x"}}}, "other"),
    ("poll info", {"Info": {"Type": "poll"}}, "other"),
]
NOWEB = [
    ("conversation", {"key": {}, "pushName": "M", "message": {"conversation": "oi"}}, "text"),
    ("extended text", {"message": {"extendedTextMessage": {"text": "oi"}}}, "text"),
    ("image", {"message": {"imageMessage": {"caption": "c"}}}, "image"),
    ("video", {"message": {"videoMessage": {}}}, "video"),
    ("voice", {"message": {"audioMessage": {"ptt": True}}}, "voice"),
    ("audio", {"message": {"audioMessage": {}}}, "audio"),
    ("document", {"message": {"documentMessage": {}}}, "document"),
    ("sticker", {"message": {"stickerMessage": {}}}, "sticker"),
    ("location", {"message": {"liveLocationMessage": {}}}, "location"),
    ("contact", {"message": {"contactMessage": {}}}, "contact"),
    ("protocol", {"message": {"protocolMessage": {"type": 0}}}, "other"),
]
WEBJS = [
    ("chat", {"type": "chat", "notifyName": "M"}, "text"),
    ("image", {"type": "image"}, "image"),
    ("video", {"type": "video"}, "video"),
    ("audio", {"type": "audio"}, "audio"),
    ("ptt", {"type": "ptt"}, "voice"),
    ("document", {"type": "document"}, "document"),
    ("sticker", {"type": "sticker"}, "sticker"),
    ("location", {"type": "location"}, "location"),
    ("vcard", {"type": "vcard"}, "contact"),
    ("multi_vcard", {"type": "multi_vcard"}, "contact"),
    ("e2e notification", {"type": "e2e_notification"}, "other"),
    ("revoked", {"type": "revoked"}, "other"),
]
ENGINE_CASES = [(f"gows-{n}", d, t) for n, d, t in GOWS] + [(f"noweb-{n}", d, t) for n, d, t in NOWEB] + [
    (f"webjs-{n}", d, t) for n, d, t in WEBJS
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in ENGINE_CASES], ids=[c[0] for c in ENGINE_CASES])
def test_content_type_from_engine_data(data: dict, expected: str) -> None:
    assert content_type(msg(_data=data, body="caption", hasMedia=expected != "text")) == expected


TOP_LEVEL_CASES = [
    ("location field", msg(location={"latitude": "1", "longitude": "2"}, _data={"type": "chat"}), "location"),
    ("vCards field", msg(vCards=["BEGIN:VCARD"], _data={"type": "chat"}), "contact"),
    ("empty vCards ignored", msg(vCards=[]), "text"),
    ("null location ignored", msg(location=None), "text"),
    ("body only", msg(), "text"),
    ("media without type", msg(hasMedia=True, body="caption"), "other"),
    ("no body, nothing", msg(body=None), "other"),
    ("blank body", msg(body="  "), "other"),
    ("unknown engine data", msg(_data={"whatever": 1}), "text"),
    ("_data not a dict", msg(_data="x"), "text"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in TOP_LEVEL_CASES], ids=[c[0] for c in TOP_LEVEL_CASES])
def test_content_type_top_level_fields(raw: dict, expected: str) -> None:
    assert content_type(raw) == expected


# ---------------------------------------------------------------------------------------------------------------
# TESTS: rejects

REJECT_CASES = [
    ("no id", msg(external_id=...), "missing id", None),
    ("null id", msg(external_id=None), "missing id", None),
    ("empty id", msg(external_id=""), "missing id", None),
    ("numeric id", msg(external_id=12), "id is not a string: 12", None),
    ("no timestamp", msg(ts=...), "missing timestamp", "false_5511912345678@c.us_A1"),
    ("null timestamp", msg(ts=None), "missing timestamp", "false_5511912345678@c.us_A1"),
    ("text timestamp", msg(ts="abc"), "timestamp is not a number: 'abc'", "false_5511912345678@c.us_A1"),
    ("bool timestamp", msg(ts=True), "timestamp is not a number: True", "false_5511912345678@c.us_A1"),
    ("list timestamp", msg(ts=[1]), "timestamp is not a number: [1]", "false_5511912345678@c.us_A1"),
    ("negative timestamp", msg(ts=-5), "timestamp out of range: -5", "false_5511912345678@c.us_A1"),
    ("huge timestamp", msg(ts=2**64 - 1), f"timestamp out of range: {2**64 - 1}", "false_5511912345678@c.us_A1"),
    ("no fromMe", msg(fromMe=...), "missing fromMe", "false_5511912345678@c.us_A1"),
    ("string fromMe", msg(fromMe="yes"), "fromMe is not a bool: 'yes'", "false_5511912345678@c.us_A1"),
    ("int fromMe", msg(fromMe=1), "fromMe is not a bool: 1", "false_5511912345678@c.us_A1"),
    ("number body", msg(body=5), "body is not a string: 5", "false_5511912345678@c.us_A1"),
    ("array payload", [1, 2], "payload is not a JSON object: list", None),
    ("string payload", '"hello"', "payload is not a JSON object: str", None),
    ("invalid json", "{not json", "payload is not valid JSON", None),
    ("NaN literal", '{"id": "x", "timestamp": NaN, "fromMe": false}', "payload is not valid JSON", None),
]


@pytest.mark.parametrize(("raw", "reason", "external_id"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES])
def test_reject_reasons(raw: Any, reason: str, external_id: str | None) -> None:
    messages, rejects, dropped = run((CHAT, raw), (CHAT, msg(external_id="good")))
    assert list(messages["external_id"]) == ["good"], "the rest of the chunk is kept"
    assert list(rejects.columns) == list(REJECT_COLUMNS) and dropped == 0
    (row,) = rejects.to_dict("records")
    assert row["reason"] == reason
    assert (None if pd.isna(row["external_id"]) else row["external_id"]) == external_id
    assert row["chat_id"] == CHAT
    payload = raw if isinstance(raw, str) else orjson.dumps(raw).decode()
    assert row["payload"] == payload, "the raw payload is kept exactly as received"
    if external_id:
        assert row["id"] == ids.reject_id(CH, CHAT, external_id)


def test_reject_of_a_message_without_id_is_keyed_by_payload_digest() -> None:
    a, b = msg(external_id=None, body="a"), msg(external_id=None, body="b")
    _, rejects, _ = run((CHAT, a), (CHAT, a), (CHAT, b))
    assert len(rejects) == 2 and rejects["id"].is_unique
    _, again, _ = run((CHAT, b), (CHAT, a))
    assert set(again["id"]) == set(rejects["id"]), "re-importing the same bad payloads gives the same reject ids"


def test_rejects_deduped_by_id_and_dropped_when_the_message_also_arrived_valid() -> None:
    bad = msg(external_id="x1", ts="abc")
    _, rejects, _ = run((CHAT, bad), (CHAT, bad), (CHAT, msg(external_id="x2", ts="zzz")))
    assert list(rejects["external_id"]) == ["x1", "x2"]
    messages, rejects, _ = run((CHAT, bad), (CHAT, msg(external_id="x1")))
    assert list(messages["external_id"]) == ["x1"] and rejects.empty


ACCEPTED_TIMESTAMPS = [(T, T), (float(T), T), (T + 0.9, T), (str(T), T), (f" {T} ", T)]


@pytest.mark.parametrize(("value", "seconds"), ACCEPTED_TIMESTAMPS, ids=[repr(v) for v, _ in ACCEPTED_TIMESTAMPS])
def test_accepted_timestamps(value: Any, seconds: int) -> None:
    assert parse_timestamp(value) == (seconds, None)
    messages, rejects, _ = run((CHAT, msg(ts=value)), start=None, end=T + 10)
    assert rejects.empty and list(messages["sent_at"]) == [seconds]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1.5e9", "", "12a"], ids=["nan", "inf", "exp", "empty", "12a"])
def test_rejected_timestamp_values(value: Any) -> None:
    seconds, reason = parse_timestamp(value)
    assert seconds is None and reason and reason.startswith("timestamp is not a number")


# ---------------------------------------------------------------------------------------------------------------
# TESTS: mapping, dedupe, window


def test_message_row_shape_and_values() -> None:
    raw = msg(external_id="false_x_A1", ts=T, body="Boa tarde", _data={"Info": {"PushName": " Maria "}})
    messages, rejects, dropped = run((CHAT, raw))
    assert list(messages.columns) == list(MESSAGE_COLUMNS)
    assert dict(messages.dtypes.astype(str)) == MESSAGE_COLUMNS
    row = messages.iloc[0].to_dict()
    assert row["id"] == ids.message_id(CH, "false_x_A1")
    assert pd.isna(row["contact_id"]) and pd.isna(row["sender_id"])
    assert (row["chat_id"], row["external_id"], row["from_me"], row["sent_at"]) == (CHAT, "false_x_A1", False, T)
    assert (row["content_type"], row["body"], row["push_name"]) == ("text", "Boa tarde", "Maria")
    assert rejects.empty and dropped == 0


def test_sent_at_is_the_waha_timestamp_not_gows_info_timestamp() -> None:
    raw = msg(ts=1_600_000_000, _data={"Info": {"Timestamp": "2025-10-15T12:15:23-03:00"}})
    messages, _, _ = run((CHAT, raw), start=None)
    assert messages["sent_at"].tolist() == [1_600_000_000]


PUSH_NAME_CASES = [
    ("gows", {"Info": {"PushName": "Maria"}}, False, "Maria"),
    ("webjs", {"notifyName": "Maria"}, False, "Maria"),
    ("noweb", {"pushName": "Maria"}, False, "Maria"),
    ("outbound has none", {"pushName": "Agent"}, True, None),
    ("blank", {"pushName": "  "}, False, None),
    ("absent", {}, False, None),
]


@pytest.mark.parametrize(("data", "from_me", "expected"), [c[1:] for c in PUSH_NAME_CASES], ids=[c[0] for c in PUSH_NAME_CASES])
def test_push_name(data: dict, from_me: bool, expected: str | None) -> None:
    messages, _, _ = run((CHAT, msg(_data=data, fromMe=from_me)))
    value = messages["push_name"].iloc[0]
    assert (None if pd.isna(value) else value) == expected


def test_sender_is_the_participant_in_groups_only() -> None:
    messages, _, _ = run(
        (GROUP, msg(external_id="g1", participant="5511999@s.whatsapp.net")),
        (GROUP, msg(external_id="g2", participant={"_serialized": "9999@lid"})),
        (CHAT, msg(external_id="d1", participant="5511999@c.us")),
    )
    assert messages["sender_id"].tolist() == ["5511999@c.us", "9999@lid", pd.NA]


def test_dedupe_by_external_id_first_wins() -> None:
    messages, _, dropped = run(
        (CHAT, msg(external_id="a", body="first")),
        ("99@lid", msg(external_id="a", body="second")),
        (CHAT, msg(external_id="b")),
    )
    assert messages["external_id"].tolist() == ["a", "b"]
    assert messages["chat_id"].tolist() == [CHAT, CHAT] and messages["body"].iloc[0] == "first"
    assert dropped == 0


WINDOW_CASES = [
    ("start edge kept", T - 100, True),
    ("end edge kept", T + 100, True),
    ("before start", T - 101, False),
    ("after end", T + 101, False),
]


@pytest.mark.parametrize(("ts", "kept"), [c[1:] for c in WINDOW_CASES], ids=[c[0] for c in WINDOW_CASES])
def test_window_is_inclusive(ts: int, kept: bool) -> None:
    messages, rejects, dropped = run((CHAT, msg(ts=ts)), start=T - 100, end=T + 100)
    assert (len(messages), dropped) == ((1, 0) if kept else (0, 1))
    assert rejects.empty, "outside the window is dropped, not rejected"


def test_no_lower_bound_keeps_old_messages_and_duplicates_count_once() -> None:
    messages, _, dropped = run(
        (CHAT, msg(external_id="old", ts=1)), (CHAT, msg(external_id="new", ts=T + 2000)),
        (CHAT, msg(external_id="new", ts=T + 2000)), start=None, end=T,
    )
    assert messages["external_id"].tolist() == ["old"] and dropped == 1


def test_empty_input() -> None:
    messages, rejects, dropped = run()
    assert messages.empty and rejects.empty and dropped == 0
    assert list(messages.columns) == list(MESSAGE_COLUMNS)
    assert list(rejects.columns) == list(REJECT_COLUMNS)


def test_nul_characters_are_rejected_not_stored() -> None:
    """PostgreSQL text cannot hold NUL: such a message becomes a reject instead of failing its chunk forever."""
    good = {"id": "false_1@c.us_A", "timestamp": 100, "fromMe": False, "body": "ok"}
    bad_body = {**good, "id": "false_1@c.us_B", "body": "a\x00b"}
    bad_id = {**good, "id": "false_1@c.us_\x00"}
    named = {**good, "id": "false_1@c.us_C", "_data": {"Info": {"PushName": "x\x00y"}}}
    fetched = pd.DataFrame({
        "chat_id": pd.array(["1@c.us"] * 4, dtype="string"),
        "payload": pd.array([orjson.dumps(m).decode() for m in (good, bad_body, bad_id, named)], dtype="string"),
    })
    result = map_messages(fetched, channel_id="c", window_start=None, window_end=200)
    messages, rejects = result.messages, result.rejects
    assert messages["external_id"].tolist() == ["false_1@c.us_A", "false_1@c.us_C"]
    assert messages["push_name"].isna().all()
    assert sorted(rejects["reason"]) == ["body contains a NUL character", "id contains a NUL character"]
