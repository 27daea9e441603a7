"""Engine profiles: how GOWS, NOWEB and WEBJS put one generated message (and chat) on the wire.

Why its own module: the dataset generates neutral facts (who, when, what) once; each engine serialises them
the way WAHA's own code does, so the import is proven against what the engines really serve. Sources:
- GOWS: devlikeapro/waha `src/core/engines/gows/session.gows.core.ts` as summarised in waha_api.md 4.2, 4.3 and
  12: `_data` = {Info, Message} from whatsmeow, `Info.Timestamp` an ISO string, `Info.SenderAlt` the phone of a
  `@lid` sender; reactions, poll votes, protocol and sender-key rows skipped after the storage slice; a zero Go
  time becomes `timestamp: null`.
- NOWEB: `src/core/engines/noweb/session.noweb.core.ts` `toWAMessage` (2024.10.8 snapshot): `timestamp:
  message.messageTimestamp` (a protobuf Long `{low, high, unsigned}` for rows Baileys decoded from history sync),
  `_data` = the Baileys WAMessage {key:{remoteJid, fromMe, id, participant, remoteJidAlt}, messageTimestamp,
  pushName, message, status}, `ack = message.status - 1`; `processIncomingMessage` returns nothing for
  reactions and poll votes and `getChatMessages` drops them with `result.filter(Boolean)` after the store slice.
- WEBJS: `src/core/engines/webjs/session.webjs.core.ts` `toWAMessage` (`_data: message.rawData`, no top-level
  `participant` in 2024.10: the group sender is only in `_data.author`) and whatsapp-web.js `Message`
  (`body` = caption for media with a `directPath`, else the raw body, which for locations and for images without
  `directPath` is the base64 JPEG thumbnail); devlikeapro/waha issue #2024 (2026.4.1): `timestamp` is missing
  when `filter.timestamp.gte` is sent, `_data.t` still has it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

ENGINES = ("gows", "noweb", "webjs")

# Non-message row reasons (SPEC 6.5): what the truth counts as skipped when such a row is served.
REACTION, POLL_VOTE, PROTOCOL, SYSTEM = "reaction", "poll_vote", "protocol", "system_notice"

# Per-message wire quirks (decided by the dataset, applied here).
NULL_TS = "null_ts"  # GOWS: timestamp null, Info.Timestamp has the time
ZERO_TIME = "zero_time"  # GOWS: timestamp null and Info.Timestamp the zero Go time -> no time anywhere (reject)
LONG_TS = "long_ts"  # NOWEB: timestamp and messageTimestamp as a Long object
NO_DIRECT_PATH = "no_direct_path"  # WEBJS image without directPath: hasMedia false, thumbnail in body
REVOKED = "revoked"  # WEBJS: a deleted message (type "revoked"), content gone
CIPHERTEXT = "ciphertext"  # WEBJS: a message still waiting for its keys (type "ciphertext")

ZERO_GO_TIME = "0001-01-01T00:00:00Z"
_BRT = timezone(timedelta(hours=-3))
_ACK_NAMES = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}

# A tiny valid JPEG, base64: what WA Web puts in `body` for location and directPath-less image messages.
THUMBNAIL_B64 = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsOCwkJDRENDg8QEBEQCgwS"
    "ExIQEw8QEBD/yQALCAABAAEBAREA/8wABgAQEAX/2gAIAQEAAD8A0s8g/9k="
)

_WEBJS_TYPE = {"text": "chat", "image": "image", "video": "video", "audio": "audio", "voice": "ptt",
               "document": "document", "sticker": "sticker", "location": "location", "contact": "vcard",
               "other": "poll_creation"}


def swa(jid: str | None) -> str | None:
    """`@c.us` -> `@s.whatsapp.net` (the engines' internal JID form)."""
    return None if jid is None else jid.replace("@c.us", "@s.whatsapp.net")


def long_object(ts: int) -> dict:
    """A protobuf.js Long as JSON (NOWEB <= 2024 history rows): 64-bit value split into two 32-bit halves."""
    low = ts & 0xFFFFFFFF
    return {"low": low - (1 << 32) if low >= 1 << 31 else low, "high": ts >> 32, "unsigned": True}


def _apply_defect(raw: dict, defect: str | None, from_me: bool, data_time: tuple[dict, str] | None) -> None:
    """Malformed messages (SPEC 6.8). A time defect removes the time from every field of 6.5 (also `_data`)."""
    if defect is None:
        return
    if defect == "missing_id":
        del raw["id"]
        return
    if defect == "fromme_not_bool":
        raw["fromMe"] = "true" if from_me else "false"
        return
    if defect in ("missing_timestamp", "string_timestamp"):
        if defect == "missing_timestamp":
            raw.pop("timestamp", None)
        else:
            raw["timestamp"] = "ontem às 14:05"
        if data_time is not None:
            holder, key = data_time
            holder.pop(key, None)


def encode_gows(f: dict) -> tuple[bytes, bytes | None]:
    """GOWS WAMessage: `_data.Info` (whatsmeow MessageInfo) + `_data.Message` (waE2E proto as JSON)."""
    chat_id, from_me, ts, ext_id = f["chat_id"], f["from_me"], f["ts"], f["ext_id"]
    me_jid, participant = f["me_jid"], f["participant"]
    sender = me_jid if from_me else (participant or chat_id)
    itype, mtype = f["info_type"]
    info: dict[str, Any] = {
        "Chat": swa(chat_id), "Sender": swa(sender), "IsFromMe": from_me, "IsGroup": f["is_group"], "ID": f["hex"],
        "Type": itype, "MediaType": mtype, "PushName": f["push"],
        "Timestamp": datetime.fromtimestamp(ts, _BRT).isoformat(),
    }
    if f.get("alt_phone") and not from_me:  # the phone of a @lid sender that /lids may not know
        info["SenderAlt"] = f"{f['alt_phone']}@s.whatsapp.net"
    raw: dict[str, Any] = {
        "id": ext_id, "timestamp": ts, "from": me_jid if from_me else chat_id, "fromMe": from_me, "source": "app",
        "to": chat_id if from_me else me_jid, "participant": participant, "body": f["body"], "hasMedia": False,
        "media": None, "ack": f["ack"], "ackName": None, "location": None, "vCards": [], "replyTo": None,
        "_data": {"Info": info, "Message": f["message"]},
    }
    raw.update(f["extras"])
    raw["ackName"] = _ACK_NAMES[raw["ack"]]
    quirk = f.get("quirk")
    if quirk == NULL_TS:
        raw["timestamp"] = None
    elif quirk == ZERO_TIME:
        raw["timestamp"] = None
        info["Timestamp"] = ZERO_GO_TIME
    _apply_defect(raw, f.get("defect"), from_me, (info, "Timestamp"))
    return orjson.dumps(raw), None


def encode_noweb(f: dict) -> tuple[bytes, bytes | None]:
    """NOWEB WAMessage over a stored Baileys WAMessage (`_data`)."""
    chat_id, from_me, ts = f["chat_id"], f["from_me"], f["ts"]
    participant = f["participant"]
    key: dict[str, Any] = {"remoteJid": swa(chat_id), "fromMe": from_me, "id": f["hex"]}
    if participant:
        key["participant"] = swa(participant)
    if f.get("alt_phone"):  # Baileys 7 addressing: the other JID form of the chat
        key["remoteJidAlt"] = f"{f['alt_phone']}@s.whatsapp.net"
    stamp: Any = long_object(ts) if f.get("quirk") == LONG_TS else ts
    data: dict[str, Any] = {"key": key, "messageTimestamp": stamp, "pushName": f["push"],
                            "message": f["message"], "status": f["ack"] + 1}
    extras = f["extras"]
    raw: dict[str, Any] = {
        "id": f["ext_id"], "timestamp": stamp, "from": chat_id, "fromMe": from_me, "source": "app",
        "to": chat_id if participant else None, "participant": participant, "body": f["body"],
        "hasMedia": extras.get("hasMedia", False), "media": None, "ack": f["ack"],
        "ackName": _ACK_NAMES[f["ack"]], "location": extras.get("location"), "vCards": extras.get("vCards", []),
        "replyTo": None, "_data": data,
    }
    _apply_defect(raw, f.get("defect"), from_me, (data, "messageTimestamp"))
    return orjson.dumps(raw), None


def encode_webjs(f: dict, *, legacy: bool) -> tuple[bytes, bytes | None]:
    """WEBJS WAMessage: whatsapp-web.js Message fields + `_data` = rawData. Second encoding: the same without
    top-level `timestamp`, served when the request has `filter.timestamp.gte` (WAHA issue #2024)."""
    chat_id, from_me, ts, me_jid = f["chat_id"], f["from_me"], f["ts"], f["me_jid"]
    participant, ctype, body, quirk = f["participant"], f["ctype"], f["body"], f.get("quirk")
    wtype = _WEBJS_TYPE[ctype]
    rid: dict[str, Any] = {"fromMe": from_me, "remote": chat_id, "id": f["hex"], "_serialized": f["ext_id"]}
    if participant:
        rid["participant"] = participant
    data: dict[str, Any] = {"id": rid, "type": wtype, "t": ts, "from": me_jid if from_me else chat_id,
                            "to": chat_id if from_me else me_jid, "ack": f["ack"], "isNewMsg": False,
                            "star": False}
    if not from_me:
        data["notifyName"] = f["push"]
    if participant:
        data["author"] = participant
    has_media = ctype in ("image", "video", "audio", "voice", "document", "sticker")
    wire_body: str = body or ""
    inner = next(iter(f["message"].values())) if f["message"] else {}
    if has_media:
        data["mimetype"] = inner.get("mimetype")
        if body:
            data["caption"] = body
        if quirk == NO_DIRECT_PATH:  # media not downloadable from WA Web: the thumbnail is all it has
            has_media = False
            wire_body = THUMBNAIL_B64
            data["body"] = THUMBNAIL_B64
        else:
            data["directPath"] = f"/v/t62.7118-24/{f['hex'].lower()}.enc"
    elif ctype == "location":
        wire_body = THUMBNAIL_B64
        data["body"] = THUMBNAIL_B64
    else:
        data["body"] = wire_body
    if quirk in (REVOKED, CIPHERTEXT):
        data["type"] = quirk
        data.pop("body", None)
        data.pop("caption", None)
        wire_body, has_media = "", False
    extras = f["extras"]
    location = extras.get("location")
    if location is not None and quirk not in (REVOKED, CIPHERTEXT):
        location = {"latitude": location["latitude"], "longitude": location["longitude"],
                    "description": location.get("description")}
        data["lat"], data["lng"] = float(location["latitude"]), float(location["longitude"])
    else:
        location = None
    raw: dict[str, Any] = {
        "id": f["ext_id"], "timestamp": ts, "from": data["from"], "fromMe": from_me, "to": data["to"],
    }
    if participant and not legacy:
        raw["participant"] = participant
    raw.update({
        "body": wire_body, "hasMedia": has_media, "media": None, "mediaUrl": None, "ack": f["ack"],
        "ackName": _ACK_NAMES[f["ack"]], "location": location,
        "vCards": extras.get("vCards", []) if quirk not in (REVOKED, CIPHERTEXT) else [], "replyTo": None,
        "_data": data,
    })
    _apply_defect(raw, f.get("defect"), from_me, (data, "t"))
    return orjson.dumps(raw), _without_timestamp(raw)


def _without_timestamp(raw: dict) -> bytes:
    return orjson.dumps({k: v for k, v in raw.items() if k != "timestamp"})


def encode(engine: str, f: dict, *, legacy: bool = False) -> tuple[bytes, bytes | None]:
    """(blob, alt): the served JSON, and for WEBJS the variant served when `filter.timestamp.gte` is sent."""
    if engine == "gows":
        return encode_gows(f)
    if engine == "noweb":
        return encode_noweb(f)
    return encode_webjs(f, legacy=legacy)


# ---------------------------------------------------------------------------------------- non-message rows

def noweb_protocol_row(chat_id: str, hex_id: str, ts: int, from_me: bool, target_hex: str, edit: bool,
                       stamp_long: bool = False) -> tuple[bytes, None]:
    """A NOWEB <= 2024 protocol row (revoke or edit of `target_hex`) as `toWAMessage` serves it: a WAMessage with
    no body whose `_data.message` is a `protocolMessage`."""
    proto: dict[str, Any] = {"key": {"remoteJid": swa(chat_id), "fromMe": from_me, "id": target_hex},
                             "type": "MESSAGE_EDIT" if edit else "REVOKE"}
    if edit:
        proto["editedMessage"] = {"conversation": "(editada)"}
    stamp: Any = long_object(ts) if stamp_long else ts
    raw = {"id": f"{'true' if from_me else 'false'}_{chat_id}_{hex_id}", "timestamp": stamp, "from": chat_id,
           "fromMe": from_me, "source": "app", "to": None, "participant": None, "body": None, "hasMedia": False,
           "media": None, "ack": 2, "ackName": "DEVICE", "location": None, "vCards": None, "replyTo": None,
           "_data": {"key": {"remoteJid": swa(chat_id), "fromMe": from_me, "id": hex_id}, "messageTimestamp": stamp,
                     "message": {"protocolMessage": proto}, "status": 3}}
    return orjson.dumps(raw), None


WEBJS_NOTICES = ("e2e_notification", "notification_template", "gp2", "call_log")


def webjs_notice_row(chat_id: str, hex_id: str, ts: int, me_jid: str, notice: str) -> tuple[bytes, bytes]:
    """A WEBJS system notice served as a message, as WAHA users report them (waha_api.md 12): empty body, the
    notice kind in `_data.type`. `WebjsClientCore.getMessages` filters only rows WA Web flags `isNotification`,
    before slicing, so the notices modelled here are the ones that pass that filter."""
    rid = {"fromMe": False, "remote": chat_id, "id": hex_id, "_serialized": f"false_{chat_id}_{hex_id}"}
    data: dict[str, Any] = {"id": rid, "type": notice, "t": ts, "from": chat_id, "to": me_jid, "ack": -1,
                            "isNewMsg": False, "star": False}
    if notice == "e2e_notification":
        data["subtype"] = "encrypt"
    elif notice == "gp2":
        data["subtype"] = "add"
    elif notice == "call_log":
        data["subtype"] = "miss"
        data["isVideoCall"] = False
    raw = {"id": rid["_serialized"], "timestamp": ts, "from": chat_id, "fromMe": False, "to": me_jid, "body": "",
           "hasMedia": False, "media": None, "mediaUrl": None, "ack": -1, "ackName": "ERROR", "location": None,
           "vCards": [], "replyTo": None, "_data": data}
    return orjson.dumps(raw), _without_timestamp(raw)
