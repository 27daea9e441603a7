"""WhatsApp chat ids: normalize the shapes WAHA sends and classify them by suffix (waha_api.md §3.1, SPEC 6.2).

Pure string logic; no I/O.
"""

from __future__ import annotations

from enum import StrEnum


class ChatKind(StrEnum):
    DIRECT = "direct"  # <digits>@c.us (and the engine-internal <digits>@s.whatsapp.net)
    LID = "lid"  # <digits>@lid, WhatsApp's privacy id of a user
    GROUP = "group"  # ...@g.us
    STATUS = "status"  # status@broadcast
    BROADCAST = "broadcast"  # <id>@broadcast lists
    NEWSLETTER = "newsletter"  # WhatsApp Channels
    UNKNOWN = "unknown"


# Imported by default; GROUP joins them only with --include-groups (SPEC 6.2).
IMPORTABLE_KINDS: frozenset[ChatKind] = frozenset({ChatKind.DIRECT, ChatKind.LID})

_SUFFIX_KIND: dict[str, ChatKind] = {
    "c.us": ChatKind.DIRECT,
    "s.whatsapp.net": ChatKind.DIRECT,
    "lid": ChatKind.LID,
    "g.us": ChatKind.GROUP,
    "broadcast": ChatKind.BROADCAST,
    "newsletter": ChatKind.NEWSLETTER,
}


def normalize_chat_id(raw: object) -> str | None:
    """One canonical string per chat, so the same chat never yields two contacts or two chunks.

    Accepts a string or a WEBJS id object (`{"_serialized": ...}` or `{"user", "server"}`). The server part is
    lower-cased, `@s.whatsapp.net` becomes `@c.us`, and a device suffix (`5511...:7@s.whatsapp.net`) is dropped
    from user ids. Returns None when there is nothing usable (None, empty, not a string, no `@`).
    """
    if isinstance(raw, dict):
        serialized = raw.get("_serialized")
        if isinstance(serialized, str):
            raw = serialized
        elif isinstance(raw.get("user"), str) and isinstance(raw.get("server"), str):
            raw = f"{raw['user']}@{raw['server']}"
        else:
            return None
    if not isinstance(raw, str):
        return None
    user, at, server = raw.strip().partition("@")
    user, server = user.strip(), server.strip().lower()
    if not at or not user or not server:
        return None
    if server == "s.whatsapp.net":
        server = "c.us"
    if server in ("c.us", "lid"):
        user = user.split(":", 1)[0]
        if not user:
            return None
    return f"{user}@{server}"


def user_part(chat_id: str) -> str:
    """The part before `@`: the phone digits of a direct chat, the lid digits of a lid chat."""
    return chat_id.partition("@")[0]


def classify_chat_id(chat_id: str) -> ChatKind:
    """Kind by suffix; a direct or lid id whose user part is not all digits is UNKNOWN (it cannot be a phone)."""
    user, _, server = chat_id.partition("@")
    if chat_id == "status@broadcast":
        return ChatKind.STATUS
    kind = _SUFFIX_KIND.get(server.lower(), ChatKind.UNKNOWN)
    if kind in (ChatKind.DIRECT, ChatKind.LID) and not (user.isascii() and user.isdigit()):
        return ChatKind.UNKNOWN
    if not user:
        return ChatKind.UNKNOWN
    return kind


def is_importable(kind: ChatKind | str, *, include_groups: bool) -> bool:
    """1:1 chats always; groups only when asked for; status, broadcasts, newsletters and junk never."""
    kind = ChatKind(kind)
    return kind in IMPORTABLE_KINDS or (include_groups and kind is ChatKind.GROUP)
