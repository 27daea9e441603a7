"""Pins map_messages on payloads shaped as the three WAHA engines send them (SPEC 6.5, 6.8; waha_api.md §4.2, §12):
time fields, rows that are not messages, thumbnails and captions, group senders, lid phones carried by messages,
and the window's two sides.

Shapes follow WAHA's own code: GOWS `toWAMessage` / `shouldProcessIncomingMessage` / `parseTimestamp`
(src/core/engines/gows/session.gows.core.ts, `_data` = whatsmeow `events.Message` JSON: `Info` + `Message`),
NOWEB `toWAMessage` (src/core/engines/noweb/session.noweb.core.ts, `timestamp` = `_data.messageTimestamp`,
`_data` = Baileys `WAMessage`: `key`, `messageTimestamp`, `message`), WEBJS `toWAMessage`
(src/core/engines/webjs/session.webjs.core.ts, `_data` = whatsapp-web.js `rawData`: `type`, `t`, `author`,
`caption`, ...), and the payloads posted in devlikeapro/waha issues #2024 and #2139.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pandas as pd
import pytest

from waha_pipeline.domain.messages import CONTENT_TYPES, SKIP_REASONS, MappedMessages, map_messages

CH = "channel-1"
PHONE, LID = "5511912345678", "203949586712345"
CHAT, LID_CHAT = f"{PHONE}@c.us", f"{LID}@lid"
OWN_PHONE, OWN_LID = "5511987654321", "140012345678901"
GROUP = "120363041234567890@g.us"
T = 1_760_540_123  # 2025-10-15T14:55:23Z
PLAN = T + 3600
# Base64 of a JPEG (starts with the SOI marker, "/9j/"), as WEBJS puts in `body` for locations and some images.
THUMB = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAYEBQYFBAYGBQYHBwYIChAKCgkJChQODwwQFxQYGBcUFhYaHSUfGhsjHBYWICwgIyYnKSop" + (
    "GR8tMC0oMCUoKSj" * 40
)


def fetched(*rows: tuple[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({
        "chat_id": pd.array([c for c, _ in rows], dtype="string"),
        "payload": [orjson.dumps(p).decode() for _, p in rows],
    })


def run(*rows: tuple[str, Any], start: int | None = T - 86_400, end: int = PLAN) -> MappedMessages:
    return map_messages(fetched(*rows), channel_id=CH, window_start=start, window_end=end)


def value(frame: pd.DataFrame, column: str) -> Any:
    (v,) = frame[column].tolist()
    return None if v is pd.NA else v


# Engine payloads -------------------------------------------------------------------------------------------------


def gows(ts: Any = T, *, info: dict | None = None, message: dict | None = None, **top: Any) -> dict[str, Any]:
    """GOWS WAMessage: `timestamp` from `Info.Timestamp`, `_data` the whatsmeow event (waha_api.md §4.2 example)."""
    base_info = {"Chat": f"{PHONE}@s.whatsapp.net", "Sender": f"{PHONE}@s.whatsapp.net", "IsFromMe": False,
                 "IsGroup": False, "ID": "3A5F0C9E21B7D4A61C2E", "Type": "text", "PushName": "Maria",
                 "Timestamp": "2025-10-15T11:55:23-03:00"}
    data = {"Info": {**base_info, **(info or {})}, "Message": message or {"conversation": "Boa tarde"}}
    payload = {"id": f"false_{CHAT}_3A5F0C9E21B7D4A61C2E", "timestamp": ts, "from": CHAT, "fromMe": False,
               "source": "app", "body": "Boa tarde", "hasMedia": False, "ack": 3, "ackName": "READ", "_data": data}
    payload.update(top)
    return {k: v for k, v in payload.items() if v is not ...}


def noweb(ts: Any = T, *, key: dict | None = None, message: dict | None = None, **top: Any) -> dict[str, Any]:
    """NOWEB WAMessage: `timestamp` = `_data.messageTimestamp` as stored (number, Long or string)."""
    data = {"key": {"remoteJid": f"{PHONE}@s.whatsapp.net", "fromMe": False, "id": "3EB0A1", **(key or {})},
            "messageTimestamp": ts, "pushName": "Maria", "message": message or {"conversation": "Oi"}, "status": 3}
    payload = {"id": f"false_{CHAT}_3EB0A1", "timestamp": ts, "from": CHAT, "fromMe": False, "body": "Oi",
               "hasMedia": False, "ack": 2, "_data": data}
    payload.update(top)
    return {k: v for k, v in payload.items() if v is not ...}


def webjs(ts: Any = T, *, data: dict | None = None, **top: Any) -> dict[str, Any]:
    """WEBJS WAMessage: `_data` is whatsapp-web.js rawData, `t` in seconds."""
    raw = {"id": {"fromMe": False, "remote": CHAT, "id": "3EB0C4", "_serialized": f"false_{CHAT}_3EB0C4"},
           "type": "chat", "t": T, "notifyName": "Maria", "from": CHAT, "to": f"{OWN_PHONE}@c.us", "body": "Oi"}
    raw.update(data or {})
    payload = {"id": f"false_{CHAT}_3EB0C4", "timestamp": ts, "from": CHAT, "fromMe": False, "to": f"{OWN_PHONE}@c.us",
               "body": raw.get("body"), "hasMedia": False, "ack": 3, "_data": raw}
    payload.update(top)
    return {k: v for k, v in payload.items() if v is not ...}


def long(n: int, unsigned: bool = False) -> dict[str, Any]:
    """protobufjs Long as JSON: signed 32-bit halves."""
    low, high = n & 0xFFFFFFFF, (n >> 32) & 0xFFFFFFFF
    to_signed = lambda x: x - 2**32 if x >= 2**31 and not unsigned else x  # noqa: E731
    return {"low": low - 2**32 if low >= 2**31 else low, "high": to_signed(high), "unsigned": unsigned}


# TESTS: time ----------------------------------------------------------------------------------------------------

ISO_T = int(datetime(2025, 10, 15, 14, 55, 23, tzinfo=UTC).timestamp())
TIME_CASES = [
    # WAHA issue #2024: WEBJS drops `timestamp` when filter.timestamp.gte is sent; `_data.t` keeps it
    ("webjs no timestamp, _data.t", webjs(ts=...), T),
    ("webjs null timestamp, _data.t", webjs(ts=None), T),
    ("webjs bad timestamp, _data.t", webjs(ts="abc"), T),
    # NOWEB <= 2024: messageTimestamp kept as a protobufjs Long, copied to `timestamp`
    ("noweb Long in both", noweb(ts=long(T, unsigned=True)), T),
    ("noweb Long only in _data", noweb(ts=long(T), timestamp=...), T),
    ("noweb Long beyond 2**31 (low negative)", noweb(ts=long(3_000_000_000)), 3_000_000_000),
    ("noweb Long with high word", noweb(ts=long(2**32 + 5)), 2**32 + 5),
    ("noweb numeric string", noweb(ts=str(T)), T),
    # GOWS: `timestamp` null for Go's zero time, 0 as a zero value; Info.Timestamp ISO with offset
    ("gows null timestamp, Info.Timestamp", gows(ts=None), ISO_T),
    ("gows zero timestamp, Info.Timestamp", gows(ts=0), ISO_T),
    ("gows nanoseconds", gows(ts=None, info={"Timestamp": "2025-10-15T14:55:23.987654321Z"}), ISO_T),
    ("timestamp wins over _data", gows(ts=T - 5), T - 5),
]


@pytest.mark.parametrize(("payload", "sent_at"), [c[1:] for c in TIME_CASES], ids=[c[0] for c in TIME_CASES])
def test_time_from_the_engines_own_fields(payload: dict, sent_at: int) -> None:
    result = run((CHAT, payload), start=None, end=2**40)
    assert result.rejects.empty
    assert result.messages["sent_at"].tolist() == [sent_at]


NO_TIME_CASES = [
    ("gows null and zero time", gows(ts=None, info={"Timestamp": "0001-01-01T00:00:00Z"}), "missing timestamp"),
    ("gows zero and no Info", gows(ts=0, info={"Timestamp": None}), "missing timestamp"),
    ("webjs none at all", webjs(ts=..., data={"t": None}), "missing timestamp"),
    ("webjs bad _data.t", webjs(ts=..., data={"t": "soon"}), "_data.t is not a number: 'soon'"),
    ("noweb bad Long", noweb(ts={"low": "x", "high": 0}), "timestamp is not a number: {'low': 'x', 'high': 0}"),
    ("noweb unsigned Long beyond int64", noweb(ts={"low": 0, "high": -1, "unsigned": True}),
     f"timestamp out of range: {0xFFFFFFFF << 32}"),
    ("gows no offset", gows(ts=None, info={"Timestamp": "2025-10-15T14:55:23"}),
     "_data.Info.Timestamp has no UTC offset: '2025-10-15T14:55:23'"),
    ("gows garbage", gows(ts=None, info={"Timestamp": "yesterday"}), "_data.Info.Timestamp is not a time: 'yesterday'"),
]


@pytest.mark.parametrize(("payload", "reason"), [c[1:] for c in NO_TIME_CASES], ids=[c[0] for c in NO_TIME_CASES])
def test_a_message_without_a_time_anywhere_is_rejected_with_its_reason(payload: dict, reason: str) -> None:
    result = run((CHAT, payload), start=None, end=2**40)
    assert result.messages.empty
    assert result.rejects["reason"].tolist() == [reason]
    assert result.rejects["external_id"].tolist() == [payload["id"]]


# TESTS: rows that are not messages ------------------------------------------------------------------------------

SKIP_CASES = [
    # NOWEB 2024.10 processIncomingMessage kept everything but reactions/poll votes: protocol rows reach the API
    ("noweb revoke", noweb(body=None, message={"protocolMessage": {"key": {"id": "3EB0"}, "type": 0}}), "protocol"),
    ("noweb edit", noweb(message={"editedMessage": {"message": {"protocolMessage": {
        "type": 14, "editedMessage": {"conversation": "corrigido"}}}}}), "protocol"),
    ("noweb sender key only", noweb(body=None, message={
        "senderKeyDistributionMessage": {"groupId": GROUP}, "messageContextInfo": {}}), "protocol"),
    ("noweb reaction", noweb(body=None, message={"reactionMessage": {"key": {"id": "3EB0"}, "text": "👍"}}), "reaction"),
    ("noweb poll vote", noweb(body=None, message={"pollUpdateMessage": {"vote": {}}}), "poll_vote"),
    # GOWS filters these itself today (shouldProcessIncomingMessage); older builds and other paths did not
    ("gows reaction", gows(body=None, info={"Type": "reaction"}, message={"reactionMessage": {"text": "❤"}}), "reaction"),
    ("gows reaction by Info.Type", gows(body=None, info={"Type": "reaction"}, message={"messageContextInfo": {}}),
     "reaction"),
    ("gows poll vote", gows(body=None, info={"Type": "poll"}, message={"pollUpdateMessage": {}}), "poll_vote"),
    ("gows event response", gows(body=None, message={"encEventResponseMessage": {}}), "event_response"),
    ("gows ephemeral protocol", gows(body=None, message={"ephemeralMessage": {"message": {
        "protocolMessage": {"type": 3}}}}), "protocol"),
    # WEBJS rawData types (whatsapp-web.js MessageTypes)
    ("webjs reaction", webjs(data={"type": "reaction", "body": "👍"}), "reaction"),
    ("webjs poll vote", webjs(data={"type": "poll_vote", "body": ""}), "poll_vote"),
    ("webjs protocol", webjs(data={"type": "protocol", "body": ""}), "protocol"),
    ("webjs e2e notification", webjs(data={"type": "e2e_notification", "subtype": "encrypt", "body": ""}), "system_notice"),
    ("webjs notification template", webjs(data={"type": "notification_template", "body": ""}), "system_notice"),
    ("webjs gp2", webjs(data={"type": "gp2", "subtype": "add", "body": ""}), "system_notice"),
    ("webjs call log", webjs(data={"type": "call_log", "subtype": "miss", "body": ""}), "system_notice"),
    ("webjs notification", webjs(data={"type": "notification", "body": ""}), "system_notice"),
    ("webjs notification without fromMe", webjs(fromMe=..., data={"type": "notification"}), "system_notice"),
]


@pytest.mark.parametrize(("payload", "reason"), [c[1:] for c in SKIP_CASES], ids=[c[0] for c in SKIP_CASES])
def test_rows_that_are_not_messages_are_skipped_and_counted(payload: dict, reason: str) -> None:
    real = webjs(id="false_x_REAL", data={"type": "chat", "body": "oi"})
    result = run((CHAT, payload), (CHAT, payload), (CHAT, real))
    assert result.messages["external_id"].tolist() == ["false_x_REAL"], "the real message stays, the other does not"
    assert result.rejects.empty, "a row that is not a message is never a reject"
    assert result.skipped == {**dict.fromkeys(SKIP_REASONS, 0), reason: 1, "duplicate": 1}, "the repeat as a duplicate"
    assert not result.late_chats


PLACEHOLDER_CASES = [("revoked", webjs(data={"type": "revoked", "body": ""})),
                     ("ciphertext", webjs(data={"type": "ciphertext", "body": "waiting"}))]


@pytest.mark.parametrize("payload", [c[1] for c in PLACEHOLDER_CASES], ids=[c[0] for c in PLACEHOLDER_CASES])
def test_revoked_and_pending_webjs_messages_are_kept_without_body(payload: dict) -> None:
    result = run((CHAT, payload))
    assert (value(result.messages, "content_type"), value(result.messages, "body")) == ("other", None)
    assert sum(result.skipped.values()) == 0


# TESTS: bodies --------------------------------------------------------------------------------------------------

BODY_CASES = [
    ("webjs location thumbnail", webjs(location={"latitude": "-23.5", "longitude": "-46.6", "description": "Loja"},
                                       data={"type": "location", "body": THUMB}), "location", None),
    ("webjs image without directPath", webjs(data={"type": "image", "body": THUMB}), "image", None),
    ("webjs image thumbnail, caption", webjs(data={"type": "image", "body": THUMB, "caption": "Segue a foto"}),
     "image", "Segue a foto"),
    ("webjs image caption as body", webjs(data={"type": "image", "body": "Segue a foto", "caption": "Segue a foto"}),
     "image", "Segue a foto"),
    ("gows caption in Message", gows(body=None, info={"Type": "media", "MediaType": "image"},
                                     message={"imageMessage": {"mimetype": "image/jpeg", "caption": "Catálogo"}}),
     "image", "Catálogo"),
    ("noweb caption in wrapper", noweb(body=None, message={"documentWithCaptionMessage": {"message": {
        "documentMessage": {"fileName": "a.pdf", "caption": "Contrato"}}}}), "document", "Contrato"),
    ("text starting like base64 stays text", webjs(data={"type": "chat", "body": THUMB}), "text", THUMB),
]


@pytest.mark.parametrize(("payload", "kind", "body"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_body_is_the_caption_never_a_thumbnail(payload: dict, kind: str, body: str | None) -> None:
    result = run((CHAT, payload))
    assert (value(result.messages, "content_type"), value(result.messages, "body")) == (kind, body)


# TESTS: group sender --------------------------------------------------------------------------------------------

GID = f"false_{GROUP}_3EB0_{PHONE}@c.us"
SENDER_CASES = [
    ("participant", webjs(id=GID, participant=f"{PHONE}@c.us"), f"{PHONE}@c.us"),
    ("author", webjs(id=GID, author=f"{PHONE}@c.us"), f"{PHONE}@c.us"),
    ("older webjs _data.author string", webjs(id=GID, data={"author": f"{PHONE}@c.us"}), f"{PHONE}@c.us"),
    ("older webjs _data.author object", webjs(id=GID, data={"author": {
        "server": "c.us", "user": PHONE, "_serialized": f"{PHONE}@c.us"}}), f"{PHONE}@c.us"),
    ("noweb key.participant", noweb(id=GID, key={"remoteJid": GROUP, "participant": f"{LID}@lid"}), LID_CHAT),
    ("gows Info.Sender with lid device", gows(id=GID, info={"Chat": GROUP, "IsGroup": True,
                                                            "Sender": f"{LID}:12@lid"}), LID_CHAT),
    ("gows Info.Sender with phone device", gows(id=GID, info={"Chat": GROUP, "IsGroup": True,
                                                              "Sender": f"{PHONE}:7@s.whatsapp.net"}), f"{PHONE}@c.us"),
    ("participant with device", gows(id=GID, participant=f"{LID}:3@lid"), LID_CHAT),
]


@pytest.mark.parametrize(("payload", "sender"), [c[1:] for c in SENDER_CASES], ids=[c[0] for c in SENDER_CASES])
def test_group_sender_from_every_engine(payload: dict, sender: str) -> None:
    assert value(run((GROUP, payload)).messages, "sender_id") == sender


# TESTS: lid phones ----------------------------------------------------------------------------------------------

PN_JID, LID_JID = f"{PHONE}@s.whatsapp.net", f"{LID}@lid"
OWN_PN_JID, OWN_LID_JID = f"{OWN_PHONE}@s.whatsapp.net", f"{OWN_LID}@lid"
FOUND = {LID: PHONE}
LID_CASES = [
    # NOWEB (Baileys 7 key): remoteJidAlt is the other address of the chat's contact
    ("noweb lid chat, remoteJidAlt phone", LID_CHAT, noweb(key={"remoteJid": LID_JID, "remoteJidAlt": PN_JID}), FOUND),
    ("noweb phone chat, remoteJidAlt lid", CHAT, noweb(key={"remoteJid": PN_JID, "remoteJidAlt": LID_JID}), FOUND),
    ("noweb 6.7 senderPn", LID_CHAT, noweb(key={"remoteJid": LID_JID, "senderPn": PN_JID}), FOUND),
    ("noweb own message not read", LID_CHAT, noweb(fromMe=True, key={
        "remoteJid": LID_JID, "fromMe": True, "remoteJidAlt": OWN_PN_JID}), {}),
    ("noweb group participantAlt", GROUP, noweb(id=GID, key={
        "remoteJid": GROUP, "participant": LID_JID, "participantAlt": PN_JID}), FOUND),
    # GOWS (whatsmeow MessageSource): SenderAlt on received, RecipientAlt on sent DMs
    ("gows phone chat, SenderAlt lid (waha_api §4.2)", CHAT, gows(info={"SenderAlt": LID_JID}), FOUND),
    ("gows lid chat, SenderAlt phone", LID_CHAT, gows(info={"Chat": LID_JID, "Sender": LID_JID, "SenderAlt": PN_JID}),
     FOUND),
    ("gows sent, RecipientAlt phone", LID_CHAT, gows(fromMe=True, info={
        "Chat": LID_JID, "Sender": f"{OWN_PHONE}:0@s.whatsapp.net", "SenderAlt": OWN_LID_JID, "IsFromMe": True,
        "RecipientAlt": PN_JID}), FOUND),
    ("gows sent, own SenderAlt not read", LID_CHAT, gows(fromMe=True, info={
        "Chat": LID_JID, "Sender": OWN_PN_JID, "SenderAlt": OWN_LID_JID, "IsFromMe": True}), {}),
    ("gows received, RecipientAlt not read", LID_CHAT, gows(info={
        "Chat": LID_JID, "Sender": LID_JID, "RecipientAlt": OWN_PN_JID}), {}),
    ("gows pair not naming the chat", CHAT, gows(info={"Chat": "5511000000000@s.whatsapp.net",
                                                       "Sender": "5511000000000@s.whatsapp.net", "SenderAlt": OWN_LID_JID}),
     {}),
    ("gows group SenderAlt", GROUP, gows(id=GID, info={"Chat": GROUP, "IsGroup": True, "Sender": f"{LID}:4@lid",
                                                       "SenderAlt": PN_JID}), FOUND),
    ("gows empty alt (Go zero JID)", CHAT, gows(info={"SenderAlt": ""}), {}),
]


@pytest.mark.parametrize(("chat", "payload", "expected"), [c[1:] for c in LID_CASES], ids=[c[0] for c in LID_CASES])
def test_lid_phones_carried_by_messages(chat: str, payload: dict, expected: dict) -> None:
    result = run((chat, payload))
    assert len(result.messages) == 1
    assert result.lid_phones == expected


def test_a_lid_seen_with_two_phones_is_left_out() -> None:
    other_phone = "5511000000000"
    other = gows(id="false_x_B", info={"Chat": f"{other_phone}@s.whatsapp.net", "Sender": f"{other_phone}@s.whatsapp.net",
                                       "SenderAlt": LID_JID})
    result = run((LID_CHAT, gows(info={"Chat": LID_JID, "Sender": LID_JID, "SenderAlt": PN_JID})),
                 (f"{other_phone}@c.us", other), (CHAT, gows(id="false_x_C", info={"SenderAlt": f"{OWN_LID}@lid"})))
    assert result.lid_phones == {OWN_LID: PHONE}, "the ambiguous lid is left out, the others stay"


def test_lid_phones_come_from_messages_outside_the_window_too() -> None:
    result = run((CHAT, gows(ts=T - 10 * 86_400, info={"SenderAlt": LID_JID})))
    assert result.messages.empty and result.lid_phones == FOUND


# TESTS: window --------------------------------------------------------------------------------------------------

WINDOW_CASES = [
    ("before the window", T - 86_401, "outside_window", False),
    ("after the plan time", PLAN + 1, "after_plan_time", True),
    # WAHA issue #2139: NOWEB 2026.6 stamped history fromMe messages with the request time in both fields
    ("noweb stamped with the fetch time", PLAN + 420, "after_plan_time", True),
]


@pytest.mark.parametrize(("ts", "reason", "late"), [c[1:] for c in WINDOW_CASES], ids=[c[0] for c in WINDOW_CASES])
def test_window_sides_are_counted_apart_and_late_stamps_mark_the_chat(ts: int, reason: str, late: bool) -> None:
    stamped = noweb(ts=ts, fromMe=True, key={"fromMe": True})
    kept = noweb(ts=T, id="true_x_KEPT", fromMe=True, key={"fromMe": True})
    result = run((CHAT, stamped), (CHAT, stamped), (CHAT, kept), ("5511000000000@c.us", kept))
    assert result.messages["external_id"].tolist() == ["true_x_KEPT"]
    assert result.skipped == {**dict.fromkeys(SKIP_REASONS, 0), reason: 1, "duplicate": 2}  # each repeat once
    assert result.late_chats == (frozenset({CHAT}) if late else frozenset())
    assert result.dropped_outside_window == 1


def test_every_content_type_is_a_known_one() -> None:
    payloads = [p for _, p, *_ in TIME_CASES + BODY_CASES + PLACEHOLDER_CASES + SENDER_CASES]
    rows = [(CHAT, {**p, "id": f"id{i}"}) for i, p in enumerate(payloads)]
    result = run(*rows, start=None, end=2**40)
    assert len(result.messages) == len(payloads)
    assert set(result.messages["content_type"]) <= CONTENT_TYPES


def test_versioned_message_keys_are_real_messages_of_another_kind() -> None:
    """Baileys (NOWEB) names newer protobuf fields with a version suffix: a poll is `pollCreationMessageV3`
    (devlikeapro/waha src/core/engines/noweb, Baileys WAProto). It is a message, typed other, never text."""
    from waha_pipeline.domain.content_types import classify

    poll = {"id": "false_1@c.us_A", "body": "Qual horário prefere?", "hasMedia": False,
            "_data": {"key": {"id": "A"}, "message": {"pollCreationMessageV3": {"name": "Qual horário prefere?"}}}}
    assert classify(poll) == "other"


def test_every_fetched_row_is_a_message_a_reject_or_a_counted_skip() -> None:
    """What the chunk's accounting check relies on: nothing fetched disappears without a count."""
    real = noweb(ts=T, id="true_x_A", fromMe=True, key={"fromMe": True})
    broken = noweb(ts=T, id="true_x_B", fromMe="yes", key={"fromMe": True})
    broken_copy_of_real = noweb(ts=T, id="true_x_A", fromMe="yes", key={"fromMe": True})
    reaction = webjs(id="false_x_R", data={"type": "reaction", "body": "👍"})
    rows = [(CHAT, real), ("5511000000000@c.us", real), (CHAT, broken), (CHAT, broken), (CHAT, broken_copy_of_real),
            (CHAT, reaction), (CHAT, reaction), (CHAT, noweb(ts=T - 86_401, id="true_x_OLD"))]
    result = run(*rows)
    assert (len(result.messages), len(result.rejects)) == (1, 1)
    assert {k: v for k, v in result.skipped.items() if v} == {"duplicate": 4, "reaction": 1, "outside_window": 1}
    assert len(result.messages) + len(result.rejects) + sum(result.skipped.values()) == len(rows)
