"""The text to store for a message that is not plain text: its caption, never a media thumbnail (SPEC 6.5).

WEBJS puts a base64 JPEG thumbnail in `body` for location messages and for image messages without
`directPath` (whatsapp-web.js copies the raw `body`); the caption then lives in `_data.caption`. GOWS and NOWEB
keep the caption in the protobuf Message (`imageMessage.caption`, ...), which WAHA copies into `body`.
"""

from __future__ import annotations

import re
from typing import Any

from waha_pipeline.domain.content_types import WEBJS_NO_BODY

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_THUMBNAIL_MIN_CHARS = 100  # a JPEG thumbnail is a few kB; a short text starting with "/9j/" is kept
_CAPTIONED = ("imageMessage", "videoMessage", "documentMessage", "ptvMessage")
_WRAPPERS = (
    "ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
    "documentWithCaptionMessage", "deviceSentMessage",
)


def is_thumbnail(body: str) -> bool:
    """A base64 JPEG (starts with the encoding of the JPEG SOI marker, "/9j/"), long, base64 characters only."""
    return len(body) >= _THUMBNAIL_MIN_CHARS and body.startswith("/9j/") and _BASE64.fullmatch(body) is not None


def _proto_caption(message: Any) -> str | None:
    for _ in range(4):
        if type(message) is not dict:
            return None
        for key in _CAPTIONED:
            media = message.get(key)
            if type(media) is dict:
                text = media.get("caption")
                return text if type(text) is str else None
        inner = next((message[k] for k in _WRAPPERS if type(message.get(k)) is dict), None)
        if inner is None:
            return None
        message = inner.get("message", inner)
    return None


def caption(data: Any) -> str | None:
    """The caption in the engine's raw message: WEBJS `_data.caption`, GOWS `_data.Message`, NOWEB `_data.message`."""
    if type(data) is not dict:
        return None
    text = data.get("caption")
    if type(text) is not str:
        message = data.get("Message")
        text = _proto_caption(message if message is not None else data.get("message"))
    if text is None or "\x00" in text or not text.strip() or is_thumbnail(text):
        return None
    return text


def media_body(body: str | None, data: Any) -> str | None:
    """`body` of a message that is not plain text: None for WEBJS revoked/ciphertext placeholders, the caption
    instead of a missing, empty or thumbnail body, else `body` itself."""
    if type(data) is dict and data.get("type") in WEBJS_NO_BODY:
        return None
    if body is None or not body.strip() or is_thumbnail(body):
        return caption(data)
    return body
