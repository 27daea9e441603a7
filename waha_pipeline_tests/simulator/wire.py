"""Reading the engines' wire forms in tests, written from WAHA's material (not the importer's code)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

ZERO_GO_TIME = "0001-01-01T00:00:00Z"


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value or None
    if isinstance(value, dict) and isinstance(value.get("low"), int) and isinstance(value.get("high"), int):
        return (value["high"] << 32) + (value["low"] & 0xFFFFFFFF) or None
    return None


def wire_time(m: dict) -> int | None:
    """The message's time from any field WAHA puts it in: `timestamp`, else WEBJS `_data.t`, NOWEB
    `_data.messageTimestamp` (int or Long object), GOWS `_data.Info.Timestamp` (ISO, not the zero Go time)."""
    ts = _seconds(m.get("timestamp"))
    if ts is not None:
        return ts
    data = m.get("_data") or {}
    for value in (data.get("t"), data.get("messageTimestamp")):
        ts = _seconds(value)
        if ts is not None:
            return ts
    iso = (data.get("Info") or {}).get("Timestamp")
    if isinstance(iso, str) and iso != ZERO_GO_TIME:
        return int(datetime.fromisoformat(iso).timestamp())
    return None


def is_good(m: dict) -> bool:
    return isinstance(m.get("id"), str) and isinstance(m.get("fromMe"), bool) and wire_time(m) is not None
