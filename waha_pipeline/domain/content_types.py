"""Message content type from a raw WAHA message: WAHA has no top-level type, it lives in `_data` (waha_api.md §11.5).

Knows the three engine shapes: GOWS `_data.Info` + `_data.Message`, NOWEB `_data.message`, WEBJS `_data.type`.
The same walk also recognises rows that are not messages at all (reactions, poll votes, protocol rows, system
notices: SPEC 6.5); `classify` names them with a skip reason instead of a content type.
"""

from __future__ import annotations

from typing import Any

CONTENT_TYPES: frozenset[str] = frozenset(
    {"text", "image", "video", "audio", "voice", "document", "sticker", "location", "contact", "other"}
)
# Why a row is not a message (disjoint from CONTENT_TYPES).
REACTION, POLL_VOTE, EVENT_RESPONSE, PROTOCOL, SYSTEM_NOTICE = (
    "reaction", "poll_vote", "event_response", "protocol", "system_notice"
)
NOT_A_MESSAGE: frozenset[str] = frozenset({REACTION, POLL_VOTE, EVENT_RESPONSE, PROTOCOL, SYSTEM_NOTICE})

# Protobuf Message keys of rows that are not messages. GOWS `shouldProcessIncomingMessage`
# (src/core/engines/gows/session.gows.core.ts) drops exactly these after `normalizeMessageContent`; NOWEB
# <= 2024.10 `processIncomingMessage` dropped only reactions and poll votes, so its store served the rest.
_SKIP_KEY: dict[str, str] = {
    "reactionMessage": REACTION,
    "encReactionMessage": REACTION,
    "pollUpdateMessage": POLL_VOTE,
    "encEventResponseMessage": EVENT_RESPONSE,
    "protocolMessage": PROTOCOL,  # revoke, edit, ephemeral setting, history sync notice, app state keys...
}

# Keys of a WhatsApp protobuf `Message` (GOWS `Message`, NOWEB/Baileys `message`).
_MESSAGE_KEY: dict[str, str] = {
    "conversation": "text",
    "extendedTextMessage": "text",
    "imageMessage": "image",
    "videoMessage": "video",
    "ptvMessage": "video",
    "audioMessage": "audio",  # "voice" when ptt is true
    "documentMessage": "document",
    "stickerMessage": "sticker",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contact",
    "contactsArrayMessage": "contact",
}
# Wrappers whose payload is another Message under "message".
_WRAPPERS = frozenset(
    {
        "ephemeralMessage",
        "viewOnceMessage",
        "viewOnceMessageV2",
        "viewOnceMessageV2Extension",
        "documentWithCaptionMessage",
        "editedMessage",
        "deviceSentMessage",
    }
)
# Keys that ride along with any message and say nothing about its type. A row holding only these is a
# sender-key distribution row (GOWS skips it: "Ignore key distribution messages").
_META_KEYS = frozenset({"messageContextInfo", "senderKeyDistributionMessage"})

# GOWS `_data.Info.MediaType` (whatsmeow) and WEBJS `_data.type`.
_MEDIA_TYPE: dict[str, str] = {
    "image": "image",
    "video": "video",
    "gif": "video",
    "ptv": "video",
    "audio": "audio",
    "ptt": "voice",
    "document": "document",
    "sticker": "sticker",
    "location": "location",
    "livelocation": "location",
    "vcard": "contact",
    "contact_array": "contact",
    "multi_vcard": "contact",
}
# whatsapp-web.js `MessageTypes` (src/util/Constants.js). `revoked` (deleted for everyone) and `ciphertext`
# (waiting for this message) are real messages whose content is gone or pending: they stay, as "other".
_WEBJS_TYPE: dict[str, str] = {
    **_MEDIA_TYPE,
    "chat": "text",
    "reaction": REACTION,
    "poll_vote": POLL_VOTE,
    "poll_update": POLL_VOTE,
    "protocol": PROTOCOL,
    "e2e_notification": SYSTEM_NOTICE,
    "notification": SYSTEM_NOTICE,
    "notification_template": SYSTEM_NOTICE,
    "group_notification": SYSTEM_NOTICE,
    "broadcast_notification": SYSTEM_NOTICE,
    "gp2": SYSTEM_NOTICE,
    "call_log": SYSTEM_NOTICE,
    "debug": SYSTEM_NOTICE,
}
# WEBJS types whose `body` is never the message's text.
WEBJS_NO_BODY = frozenset({"revoked", "ciphertext"})


def _from_message(message: Any) -> str | None:
    """Type (or skip reason) from the protobuf Message keys; None when they are absent or only metadata.

    One pass over the keys (this runs once per message of a million-row chunk); wrappers such as
    ephemeral/view-once/edited are unwrapped a few levels at most, as Baileys' `normalizeMessageContent`.
    """
    for _ in range(4):
        if type(message) is not dict:
            return None
        inner = None
        key_distribution = False
        for key, value in message.items():
            if value is None:
                continue
            kind = _MESSAGE_KEY.get(key)
            if kind is not None:
                # Baileys (NOWEB) spells the flag `ptt`, whatsmeow (GOWS) `PTT`
                if kind == "audio" and type(value) is dict and (value.get("ptt") is True or value.get("PTT") is True):
                    return "voice"
                return kind
            skip = _SKIP_KEY.get(key)
            if skip is not None:
                return skip
            if key in _WRAPPERS and type(value) is dict:
                inner = value.get("message", value)
                break
            if key == "senderKeyDistributionMessage":
                key_distribution = True
            elif "Message" in key and key not in _META_KEYS:  # also versioned keys: pollCreationMessageV3
                return "other"  # poll creation, call, event, buttons...: a message without a stored kind
        if inner is None:
            return PROTOCOL if key_distribution else None
        message = inner
    return None


def _info_media_type(data: dict[str, Any]) -> str | None:
    info = data.get("Info")
    media_type = info.get("MediaType") if type(info) is dict else None
    return media_type.lower() if type(media_type) is str else None


def _from_data(data: dict[str, Any]) -> str | None:
    """GOWS `Message` / NOWEB `message` keys first (they carry the ptt flag), then GOWS `Info`, then WEBJS `type`."""
    message = data.get("Message")
    if message is None:
        message = data.get("message")
    if message is not None:
        kind = _from_message(message)
        if kind == "audio" and _info_media_type(data) == "ptt":
            return "voice"
        if kind:
            return kind
    info = data.get("Info")
    if type(info) is dict:
        media_type = info.get("MediaType")
        if type(media_type) is str and media_type.lower() in _MEDIA_TYPE:
            return _MEDIA_TYPE[media_type.lower()]
        info_type = info.get("Type")
        if info_type == "text":
            return "text"
        if info_type == "reaction":
            return REACTION
        if type(info_type) is str and info_type not in ("", "media"):
            return "other"  # poll, ...
    webjs_type = data.get("type")
    if type(webjs_type) is str and webjs_type:
        return _WEBJS_TYPE.get(webjs_type, "other")  # revoked, ciphertext, poll_creation, ...
    return None


def skip_reason(raw: dict[str, Any]) -> str | None:
    """Why this row is not a message (one of NOT_A_MESSAGE), or None for a real message.

    Rows that are not messages, by source:
    - reactions: protobuf `reactionMessage` / `encReactionMessage` (NOWEB `_data.message`, GOWS
      `_data.Message`), GOWS `Info.Type` "reaction", WEBJS `_data.type` "reaction";
    - poll votes: `pollUpdateMessage`, WEBJS "poll_vote" (also "poll_update"); event answers:
      `encEventResponseMessage`;
    - protocol rows: `protocolMessage` (revoke, edit, also inside `editedMessage`), rows holding only a
      `senderKeyDistributionMessage`, WEBJS "protocol";
    - system notices: WEBJS e2e_notification, notification, notification_template, group_notification,
      broadcast_notification, gp2, call_log, debug (whatsapp-web.js `MessageTypes`).
    GOWS drops the protobuf ones itself (`shouldProcessIncomingMessage`), older NOWEB and WEBJS did not.
    """
    kind = classify(raw)
    return kind if kind in NOT_A_MESSAGE else None


def content_type(raw: dict[str, Any]) -> str:
    """One of CONTENT_TYPES ("other" for a row that is not a message: see skip_reason)."""
    kind = classify(raw)
    return "other" if kind in NOT_A_MESSAGE else kind


def classify(raw: dict[str, Any]) -> str:
    """One of CONTENT_TYPES, or one of NOT_A_MESSAGE (skip_reason). One walk for both, since it runs per message.

    Order: `location`, `vCards`, the engine's `_data`, then `hasMedia` and `body`.
    Media whose kind no field reveals is "other" (never "text": the old importer typed everything text).
    """
    get = raw.get
    if type(get("location")) is dict:
        return "location"
    vcards = get("vCards")
    if vcards and type(vcards) is list:
        return "contact"
    data = get("_data")
    if type(data) is dict:
        kind = _from_data(data)
        if kind:
            return kind
    if get("hasMedia") is True:
        return "other"
    body = get("body")
    return "text" if type(body) is str and body.strip() else "other"
