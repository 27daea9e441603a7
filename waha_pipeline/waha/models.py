"""WAHA payloads parsed at the boundary: sessions and lid mappings become frozen dataclasses.

Chats and messages stay raw dicts: the domain layer normalizes and validates them, and a malformed message
must reach it unchanged so it can be rejected with its raw payload (SPEC 6.8). Imports nothing but stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

WORKING = "WORKING"


@dataclass(frozen=True)
class SessionInfo:
    """One WAHA session (= one CRM channel)."""

    name: str
    status: str
    tenant_id: str | None  # config.metadata.tenant_id, when the session carries one
    me_id: str | None  # "<digits>@c.us" of the connected phone, None when not authenticated
    me_push_name: str | None
    engine: str | None  # "WEBJS" | "NOWEB" | "GOWS" | ..., when the server says

    @property
    def working(self) -> bool:
        return self.status == WORKING


@dataclass(frozen=True)
class LidMapping:
    """WAHA's lid -> phone mapping for one lid; `phone` is None when WAHA does not know it (yet)."""

    lid: str  # digits of "<digits>@lid"
    phone: str | None  # digits of "<digits>@c.us", or None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def serialized_id(value: Any) -> str | None:
    """The id as a string: engines send either "x@c.us" or {"_serialized": "x@c.us", ...}; else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return _str_or_none(value.get("_serialized"))
    return None


def chat_id_of(chat: Any) -> str | None:
    """The chat's id string (not suffix-normalized; the domain does that), or None when it has none."""
    return serialized_id(chat.get("id")) if isinstance(chat, dict) else None


def message_id_of(message: Any) -> str | None:
    """The message's dedup key (WAHA `id`), or None when it has no usable id."""
    return serialized_id(message.get("id")) if isinstance(message, dict) else None


def _engine_name(raw: dict[str, Any]) -> str | None:
    engine = raw.get("engine")
    if isinstance(engine, dict):  # GET one: {"engine": {"engine": "NOWEB", ...}}
        return _str_or_none(engine.get("engine"))
    if isinstance(engine, str):
        return engine or None
    config = raw.get("config")
    if isinstance(config, dict):
        return _str_or_none(config.get("engine"))
    return None


def parse_session(raw: Any) -> SessionInfo:
    """Parse a `SessionInfo` object. Raises ValueError when it has no name or status."""
    if not isinstance(raw, dict):
        raise ValueError(f"session is not an object: {type(raw).__name__}")
    name, status = raw.get("name"), raw.get("status")
    if not isinstance(name, str) or not name or not isinstance(status, str) or not status:
        raise ValueError("session has no name or status")
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    tenant = metadata.get("tenant_id")
    me = raw.get("me") if isinstance(raw.get("me"), dict) else {}
    return SessionInfo(
        name=name,
        status=status,
        tenant_id=str(tenant) if isinstance(tenant, (str, int)) and str(tenant) else None,
        me_id=serialized_id(me.get("id")),
        me_push_name=_str_or_none(me.get("pushName")),
        engine=_engine_name(raw),
    )


def _digits_of(value: Any, suffixes: tuple[str, ...]) -> str | None:
    """'123@lid' -> '123' (also plain digits and {_serialized}); None for anything else."""
    text = serialized_id(value)
    if text is None:
        return None
    for suffix in suffixes:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    text = text.split(":", 1)[0]  # device part of "<digits>:<device>@s.whatsapp.net"
    return text if text.isdigit() else None


def parse_lid_mapping(raw: Any) -> LidMapping | None:
    """Parse one `LidToPhoneNumber` row; None when the lid itself is unusable."""
    if not isinstance(raw, dict):
        return None
    lid = _digits_of(raw.get("lid"), ("@lid",))
    if lid is None:
        return None
    return LidMapping(lid=lid, phone=_digits_of(raw.get("pn"), ("@c.us", "@s.whatsapp.net")))


def _seconds(value: Any) -> int | None:
    """Unix seconds from a number, a numeric string or a protobuf Long `{low, high}`; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, dict) and isinstance(value.get("low"), int) and isinstance(value.get("high"), int):
        return (value["high"] << 32) | (value["low"] & 0xFFFFFFFF)
    return None


def message_time_of(message: Any) -> int | None:
    """The message's time in Unix seconds as far as paging needs it: WAHA `timestamp`, else the engine's own field
    (WEBJS `_data.t`, NOWEB `_data.messageTimestamp`, GOWS `_data.Info.Timestamp`); None when it has none."""
    if not isinstance(message, dict):
        return None
    found = _seconds(message.get("timestamp"))
    data = message.get("_data")
    if found is None and isinstance(data, dict):
        found = _seconds(data.get("t"))
        if found is None:
            found = _seconds(data.get("messageTimestamp"))
        info = data.get("Info")
        if found is None and isinstance(info, dict) and isinstance(info.get("Timestamp"), str):
            try:
                found = int(datetime.fromisoformat(info["Timestamp"].replace("Z", "+00:00")).timestamp())
            except ValueError:
                found = None
    return found if found is not None and found >= 0 else None


@dataclass(frozen=True)
class ChatRead:
    """One chat's messages as read from WAHA, and how far that read is proven complete.

    `proven_to`: every message of the chat with `gte <= timestamp <= proven_to` was read (inclusive). It equals the
    read's `lte` when the end was proven, the newest timestamp read when the pages ran out without evidence of the
    end (messages of that second may remain unread: the next import reads it again), and None when nothing is
    proven. `newest` is the newest timestamp among the items read.
    """

    items: list[Any]
    proven_to: int | None
    newest: int | None = None

    def complete(self, lte: int) -> bool:
        return self.proven_to is not None and self.proven_to >= lte
