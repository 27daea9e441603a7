"""Message content type from a raw WAHA message: WAHA has no top-level type, it lives in `_data` (waha_api.md §11.5).

Knows the three engine shapes: GOWS `_data.Info` + `_data.Message`, NOWEB `_data.message`, WEBJS `_data.type`.
"""

from __future__ import annotations

from typing import Any

CONTENT_TYPES: frozenset[str] = frozenset(
    {"text", "image", "video", "audio", "voice", "document", "sticker", "location", "contact", "other"}
)

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
    }
)
# Keys that ride along with any message and say nothing about its type.
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
_WEBJS_TYPE: dict[str, str] = {**_MEDIA_TYPE, "chat": "text"}


def _from_message(message: Any) -> str | None:
    """Type from the protobuf Message keys; None when they are absent or only metadata.

    One pass over the keys (this runs once per message of a million-row chunk); wrappers such as
    ephemeral/view-once are unwrapped a few levels at most.
    """
    for _ in range(4):
        if type(message) is not dict:
            return None
        inner = None
        for key, value in message.items():
            if value is None:
                continue
            kind = _MESSAGE_KEY.get(key)
            if kind is not None:
                # Baileys (NOWEB) spells the flag `ptt`, whatsmeow (GOWS) `PTT`
                if kind == "audio" and type(value) is dict and (value.get("ptt") is True or value.get("PTT") is True):
                    return "voice"
                return kind
            if key in _WRAPPERS and type(value) is dict:
                inner = value.get("message", value)
                break
            if key.endswith("Message") and key not in _META_KEYS:
                return "other"  # reaction, protocol, poll, call...: a known non-content message
        if inner is None:
            return None
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
        if type(info_type) is str and info_type not in ("", "media"):
            return "other"  # reaction, poll, ...
    webjs_type = data.get("type")
    if type(webjs_type) is str and webjs_type:
        return _WEBJS_TYPE.get(webjs_type, "other")  # e2e_notification, revoked, call_log, ...
    return None


def content_type(raw: dict[str, Any]) -> str:
    """One of CONTENT_TYPES. Order: `location`, `vCards`, the engine's `_data`, then `hasMedia` and `body`.

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
