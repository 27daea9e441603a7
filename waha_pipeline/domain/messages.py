"""Raw WAHA messages -> validated message rows and rejects with their reasons (SPEC 6.5, 6.8).

One Python pass over the payloads builds plain column lists; pandas only sees whole columns.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import MESSAGE_COLUMNS, REJECT_COLUMNS, empty_frame
from waha_pipeline.domain.chat_ids import ChatKind, classify_chat_id, normalize_chat_id
from waha_pipeline.domain.content_types import CONTENT_TYPES, content_type

__all__ = ["CONTENT_TYPES", "content_type", "map_messages", "parse_timestamp", "push_name"]

_INT64_MAX = 2**63 - 1
_ROW_FIELDS = ("chat_id", "external_id", "from_me", "sent_at", "content_type", "body", "sender_id", "push_name")


def parse_timestamp(value: Any) -> tuple[int | None, str | None]:
    """(seconds, None) or (None, reason). WAHA sends Unix seconds as a JSON number.

    Accepted: ints, finite floats (floored: a fractional second is still that second) and strings holding a
    plain integer ("1760540123"), since a proxy or an older engine may quote numbers. Rejected: missing/null,
    bools (JSON true is not a time), NaN/inf, other strings, negatives and values beyond int64.
    """
    if value is None:
        return None, "missing timestamp"
    if isinstance(value, bool):
        return None, f"timestamp is not a number: {value!r}"
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None, f"timestamp is not a number: {value!r}"
        seconds = math.floor(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("-").isdigit():
        seconds = int(value.strip())
    else:
        return None, f"timestamp is not a number: {_short(value)}"
    if seconds < 0 or seconds > _INT64_MAX:
        return None, f"timestamp out of range: {seconds}"
    return seconds, None


def push_name(data: Any) -> str | None:
    """Sender's profile name from `_data`: GOWS `Info.PushName`, WEBJS `notifyName`, NOWEB `pushName`."""
    if not isinstance(data, dict):
        return None
    info = data.get("Info")
    name = info.get("PushName") if isinstance(info, dict) else None
    name = name or data.get("notifyName") or data.get("pushName")
    return (name.strip() or None) if isinstance(name, str) and "\x00" not in name else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate(msg: Any) -> tuple[str | None, str | None]:
    """(external_id, reason): reason None means valid. external_id is returned even for a rejected message."""
    if not isinstance(msg, dict):
        return None, f"payload is not a JSON object: {type(msg).__name__}"
    external_id = msg.get("id")
    if external_id is None or (isinstance(external_id, str) and not external_id.strip()):
        return None, "missing id"
    if not isinstance(external_id, str):
        return None, f"id is not a string: {_short(external_id)}"
    if "\x00" in external_id:
        return None, "id contains a NUL character"
    if "fromMe" not in msg or msg["fromMe"] is None:
        return external_id, "missing fromMe"
    if not isinstance(msg["fromMe"], bool):
        return external_id, f"fromMe is not a bool: {_short(msg['fromMe'])}"
    body = msg.get("body")
    if body is not None and not isinstance(body, str):
        return external_id, f"body is not a string: {_short(body)}"
    if body is not None and "\x00" in body:  # PostgreSQL text cannot hold it: reject, never fail the chunk
        return external_id, "body contains a NUL character"
    return external_id, None


def map_messages(
    fetched: pd.DataFrame, *, channel_id: str, window_start: int | None, window_end: int
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(messages, rejects, dropped_outside_window) for one chunk.

    `fetched` has `chat_id` (normalized, the chat queried) and `payload` (raw JSON text as received).
    Messages: MESSAGE_COLUMNS with `contact_id` <NA> (identity fills it) plus `push_name` (inbound only).
    Duplicates by external_id collapse to their first occurrence, so the caller should pass rows in plan
    order (the same message listed under a contact's @c.us and @lid chats is one message). Rejects are
    unique by reject id, and a reject whose external id also arrived valid is dropped (it was imported).
    Valid messages outside the inclusive window are dropped and counted, not rejected.
    """
    # Plain per-column lists of strings/ints/bools: no GC-tracked object survives per row (a list of row tuples
    # made the cyclic GC rescan a million tuples and cost ~40% more).
    cols: dict[str, list[Any]] = {name: [] for name in _ROW_FIELDS}
    add_chat, add_external, add_from_me, add_sent, add_type, add_body, add_sender, add_push = (
        cols[name].append for name in _ROW_FIELDS
    )
    rejects: dict[str, tuple[str, str | None, str, str]] = {}
    seen: set[str] = set()
    dropped = 0
    lo = -1 if window_start is None else window_start
    group_chat: dict[str, bool] = {}
    loads = orjson.loads

    for chat_id, payload in zip(fetched["chat_id"].tolist(), fetched["payload"].tolist(), strict=True):
        try:
            msg = loads(payload)
        except (orjson.JSONDecodeError, TypeError):
            msg, external_id, sent_at, reason = None, None, None, "payload is not valid JSON"
        else:
            if type(msg) is dict:
                external_id, sent_at, from_me, body = msg.get("id"), msg.get("timestamp"), msg.get("fromMe"), msg.get("body")
                fast = (
                    type(external_id) is str
                    and external_id.strip()
                    and type(sent_at) is int
                    and 0 <= sent_at <= _INT64_MAX
                    and type(from_me) is bool
                    and (body is None or (type(body) is str and "\x00" not in body))
                    and "\x00" not in external_id
                )
            else:
                fast = False
            reason = None
            if not fast:  # the common shape is checked inline above; anything else takes the careful path
                external_id, reason = _validate(msg)
                if reason is None:
                    sent_at, reason = parse_timestamp(msg.get("timestamp"))
                    from_me, body = msg["fromMe"], msg.get("body")
        if reason is not None:
            text = payload if isinstance(payload, str) else repr(payload)
            key = external_id or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            rejects.setdefault(ids.reject_id(channel_id, chat_id, key), (chat_id, external_id, reason, text))
            continue
        if external_id in seen:
            continue
        seen.add(external_id)
        if sent_at < lo or sent_at > window_end:
            dropped += 1
            continue
        is_group = group_chat.get(chat_id)
        if is_group is None:
            is_group = group_chat[chat_id] = classify_chat_id(chat_id) is ChatKind.GROUP
        add_chat(chat_id)
        add_external(external_id)
        add_from_me(from_me)
        add_sent(sent_at)
        add_type(content_type(msg))
        add_body(body)
        add_sender(normalize_chat_id(msg.get("participant") or msg.get("author")) if is_group else None)
        add_push(None if from_me else push_name(msg.get("_data")))

    messages = _message_frame(cols, channel_id)
    reject_rows = [(rid, *row) for rid, row in rejects.items() if row[1] is None or row[1] not in seen]
    return messages, _reject_frame(reject_rows), dropped


def _message_frame(cols: dict[str, list[Any]], channel_id: str) -> pd.DataFrame:
    if not cols["external_id"]:
        return empty_frame(MESSAGE_COLUMNS)
    n = len(cols["external_id"])
    data = {
        "id": ids.message_ids(channel_id, cols["external_id"]),
        "contact_id": [None] * n,
        **{name: cols[name] for name in MESSAGE_COLUMNS if name not in ("id", "contact_id")},
        "push_name": cols["push_name"],
    }
    return pd.DataFrame({name: _column(data[name], dtype) for name, dtype in MESSAGE_COLUMNS.items()})


def _column(values: list[Any], dtype: str) -> Any:
    """Strings go through pyarrow directly: 3x faster than pd.array(list, "string") for a million values."""
    if dtype == "string":
        return pd.array(pa.array(values, type=pa.large_string()), dtype="string")
    return pd.array(values, dtype=dtype)


def _reject_frame(rows: list[tuple[str, str, str | None, str, str]]) -> pd.DataFrame:
    if not rows:
        return empty_frame(REJECT_COLUMNS)
    return pd.DataFrame(
        {name: _column([r[i] for r in rows], dtype) for i, (name, dtype) in enumerate(REJECT_COLUMNS.items())}
    )
