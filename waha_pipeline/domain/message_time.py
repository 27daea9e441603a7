"""When a raw WAHA message was sent, from whichever field its engine filled (SPEC 6.5, waha_api.md §4.2, §12).

Fields, in order (the first one holding a time wins):
- `timestamp`: Unix seconds, set by every engine's `toWAMessage`. WEBJS leaves it out when the request carries
  `filter.timestamp.gte` (devlikeapro/waha issue #2024); GOWS sends `null` when whatsmeow's time is Go's zero
  time `0001-01-01T00:00:00Z` (`parseTimestamp` in src/core/engines/gows/session.gows.core.ts).
- `_data.t`: WEBJS raw message time, Unix seconds (whatsapp-web.js `rawData`).
- `_data.messageTimestamp`: NOWEB (Baileys `WAMessage`), Unix seconds; a protobuf Long `{low, high, unsigned}`
  when the store kept the decoded object (NOWEB <= 2024), or a numeric string.
- `_data.Info.Timestamp`: GOWS (whatsmeow `MessageInfo.Timestamp`), an ISO-8601 string with offset, Go's zero
  time when unknown.
`null`, `0` and the zero time mean "no time here": the next field is tried. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

INT64_MAX = 2**63 - 1
_TWO_32 = 2**32


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_timestamp(value: Any, field: str = "timestamp") -> tuple[int | None, str | None]:
    """(seconds, None) or (None, reason) for one Unix-seconds field.

    Accepted: ints, finite floats (floored: a fractional second is still that second), strings holding a plain
    integer ("1760540123", since a proxy or an older engine may quote numbers) and protobuf Long objects
    `{low, high, unsigned}` (NOWEB). Rejected: missing/null, bools (JSON true is not a time), NaN/inf, other
    strings, negatives and values beyond int64.
    """
    if value is None:
        return None, f"missing {field}"
    if isinstance(value, bool):
        return None, f"{field} is not a number: {value!r}"
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None, f"{field} is not a number: {value!r}"
        seconds = math.floor(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("-").isdigit():
        seconds = int(value.strip())
    elif isinstance(value, dict) and "low" in value and "high" in value:
        seconds = long_value(value)
        if seconds is None:
            return None, f"{field} is not a number: {_short(value)}"
    else:
        return None, f"{field} is not a number: {_short(value)}"
    if seconds < 0 or seconds > INT64_MAX:
        return None, f"{field} out of range: {seconds}"
    return seconds, None


def long_value(value: dict[str, Any]) -> int | None:
    """The integer of a long.js / protobufjs Long `{low, high, unsigned}`: high * 2**32 + unsigned low.

    `low` and `high` are 32-bit halves that long.js keeps as signed ints; `high` is taken unsigned when
    `unsigned` is true. None when a half is not an int.
    """
    low, high = value.get("low"), value.get("high")
    if type(low) is not int or type(high) is not int:
        return None
    if value.get("unsigned") is True:
        high &= 0xFFFFFFFF
    return high * _TWO_32 + (low & 0xFFFFFFFF)


def parse_iso(value: Any, field: str) -> tuple[int | None, str | None]:
    """(seconds, None), (None, None) for Go's zero time (no time), or (None, reason). Seconds are floored."""
    if not isinstance(value, str):
        return None, f"{field} is not a time: {_short(value)}"
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, f"{field} is not a time: {_short(value)}"
    if moment.tzinfo is None:
        return None, f"{field} has no UTC offset: {_short(value)}"
    seconds = math.floor(moment.timestamp())
    if seconds <= 0:  # Go's zero time 0001-01-01T00:00:00Z: whatsmeow did not know the time
        return None, None
    return seconds, None


def _absent(value: Any) -> bool:
    """null, a zero number and an all-zero Long carry no time (GOWS null, Go zero values)."""
    if value is None:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str) and value.strip() in ("", "0"):
        return True
    return isinstance(value, dict) and long_value(value) == 0


def message_time(msg: dict[str, Any]) -> tuple[int | None, str | None]:
    """(seconds, None) from the first field holding a time (module docstring), or (None, reason).

    The reason is the first field that held something unusable, else "missing timestamp" when no field held
    anything.
    """
    first_bad: str | None = None
    value = msg.get("timestamp")
    if not _absent(value):
        seconds, first_bad = parse_timestamp(value)
        if seconds is not None:
            return seconds, None
    data = msg.get("_data")
    if type(data) is dict:
        for key in ("t", "messageTimestamp"):
            value = data.get(key)
            if not _absent(value):
                seconds, reason = parse_timestamp(value, f"_data.{key}")
                if seconds is not None:
                    return seconds, None
                first_bad = first_bad or reason
        info = data.get("Info")
        value = info.get("Timestamp") if type(info) is dict else None
        if not _absent(value):
            seconds, reason = parse_iso(value, "_data.Info.Timestamp")
            if seconds is not None:
                return seconds, None
            first_bad = first_bad or reason
    return None, first_bad or "missing timestamp"
