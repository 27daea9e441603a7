"""Raw WAHA messages -> validated message rows, rejects with their reasons and counted skips (SPEC 6.5, 6.8).

One Python pass over the payloads builds plain column lists; pandas only sees whole columns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import MESSAGE_COLUMNS, REJECT_COLUMNS, empty_frame
from waha_pipeline.domain.bodies import media_body
from waha_pipeline.domain.chat_ids import ChatKind, classify_chat_id
from waha_pipeline.domain.content_types import CONTENT_TYPES, NOT_A_MESSAGE, classify, content_type, skip_reason
from waha_pipeline.domain.message_time import INT64_MAX, message_time, parse_timestamp
from waha_pipeline.domain.senders import group_sender, lid_phone

__all__ = [
    "CONTENT_TYPES",
    "SKIP_REASONS",
    "MappedMessages",
    "content_type",
    "map_messages",
    "message_time",
    "parse_timestamp",
    "push_name",
    "skip_reason",
]

OUTSIDE_WINDOW, AFTER_PLAN_TIME, DUPLICATE = "outside_window", "after_plan_time", "duplicate"
# Every key of MappedMessages.skipped: rows that are not messages, then valid messages outside the window.
SKIP_REASONS: tuple[str, ...] = (*sorted(NOT_A_MESSAGE), OUTSIDE_WINDOW, AFTER_PLAN_TIME, DUPLICATE)
_ROW_FIELDS = ("chat_id", "external_id", "from_me", "sent_at", "content_type", "body", "sender_id", "push_name")


@dataclass(frozen=True)
class MappedMessages:
    """One chunk's fetched rows, mapped.

    - `messages`: MESSAGE_COLUMNS (contact_id <NA>, identity fills it), unique by external_id.
    - `rejects`: REJECT_COLUMNS, unique by reject id; malformed messages with their reasons (SPEC 6.8).
    - `skipped`: count per reason, every key of SKIP_REASONS present: rows that are not messages
      ("reaction", "poll_vote", "event_response", "protocol", "system_notice"), valid messages sent before
      the window ("outside_window") or after its end, the plan time ("after_plan_time"), and rows served again
      (a message under a contact's @c.us and @lid chats, a repeated page: "duplicate"). Every fetched row is
      a message, a reject or one of these.
    - `lid_phones`: lid digits -> phone digits that messages themselves carry (SPEC 6.5); a lid seen with two
      different phones is left out.
    - `late_chats`: chats with a message stamped after the plan time: their coverage must not advance, since
      that stamp is not the send time WAHA was asked for (an engine that ignores `lte`, or NOWEB stamping
      history with the request time).
    """

    messages: pd.DataFrame
    rejects: pd.DataFrame
    skipped: dict[str, int]
    lid_phones: dict[str, str]
    late_chats: frozenset[str]

    @property
    def dropped_outside_window(self) -> int:
        """Valid messages left out by the window on either side."""
        return self.skipped[OUTSIDE_WINDOW] + self.skipped[AFTER_PLAN_TIME]


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
) -> MappedMessages:
    """Map one chunk's fetched rows (see MappedMessages).

    `fetched` has `chat_id` (normalized, the chat queried) and `payload` (raw JSON text as received).
    Rows that are not messages are counted and dropped before validation (a reaction is never a reject).
    Duplicates by external_id collapse to their first occurrence, so the caller should pass rows in plan
    order (the same message listed under a contact's @c.us and @lid chats is one message). Rejects are
    unique by reject id, and a reject whose external id also arrived valid is dropped (it was imported).
    Valid messages outside the inclusive window are counted, not rejected.
    """
    # Plain per-column lists of strings/ints/bools: no GC-tracked object survives per row (a list of row tuples
    # made the cyclic GC rescan a million tuples and cost ~40% more).
    cols: dict[str, list[Any]] = {name: [] for name in _ROW_FIELDS}
    add_chat, add_external, add_from_me, add_sent, add_type, add_body, add_sender, add_push = (
        cols[name].append for name in _ROW_FIELDS
    )
    rejects: dict[str, tuple[str, str | None, str, str]] = {}
    seen: set[str] = set()
    skipped_ids: set[str] = set()
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    late_chats: set[str] = set()
    lid_phones: dict[str, str] = {}
    conflicting_lids: set[str] = set()
    paired_chats: set[str] = set()  # 1:1 chats whose lid/phone pair is known: later messages need no look
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
                kind = classify(msg)
                if kind in NOT_A_MESSAGE:
                    external_id = msg.get("id")
                    if type(external_id) is str:
                        if external_id in skipped_ids:
                            skipped[DUPLICATE] += 1
                            continue
                        skipped_ids.add(external_id)
                    skipped[kind] += 1
                    continue
                external_id, sent_at, from_me, body = msg.get("id"), msg.get("timestamp"), msg.get("fromMe"), msg.get("body")
                fast = (
                    type(external_id) is str
                    and external_id.strip()
                    and type(sent_at) is int
                    and 0 < sent_at <= INT64_MAX
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
                    sent_at, reason = message_time(msg)
                    from_me, body = msg["fromMe"], msg.get("body")
        if reason is not None:
            text = payload if isinstance(payload, str) else repr(payload)
            key = external_id or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            reject_key = ids.reject_id(channel_id, chat_id, key)
            if reject_key in rejects:
                skipped[DUPLICATE] += 1
            rejects.setdefault(reject_key, (chat_id, external_id, reason, text))
            continue
        if external_id in seen:
            skipped[DUPLICATE] += 1
            continue
        seen.add(external_id)
        is_group = group_chat.get(chat_id)
        if is_group is None:
            is_group = group_chat[chat_id] = classify_chat_id(chat_id) is ChatKind.GROUP
        if is_group or chat_id not in paired_chats:
            pair = lid_phone(msg, chat_id, is_group=is_group, from_me=from_me)
            if pair is not None:
                lid, phone = pair
                if lid_phones.setdefault(lid, phone) != phone:
                    conflicting_lids.add(lid)
                if not is_group:
                    paired_chats.add(chat_id)
        if sent_at < lo:
            skipped[OUTSIDE_WINDOW] += 1
            continue
        if sent_at > window_end:
            skipped[AFTER_PLAN_TIME] += 1
            late_chats.add(chat_id)
            continue
        if kind != "text":
            body = media_body(body, msg.get("_data"))
        add_chat(chat_id)
        add_external(external_id)
        add_from_me(from_me)
        add_sent(sent_at)
        add_type(kind)
        add_body(body)
        add_sender(group_sender(msg) if is_group else None)
        add_push(None if from_me else push_name(msg.get("_data")))

    messages = _message_frame(cols, channel_id)
    reject_rows = [(rid, *row) for rid, row in rejects.items() if row[1] is None or row[1] not in seen]
    skipped[DUPLICATE] += len(rejects) - len(reject_rows)  # a malformed copy of a message that also came valid
    for lid in conflicting_lids:
        del lid_phones[lid]
    return MappedMessages(
        messages=messages,
        rejects=_reject_frame(reject_rows),
        skipped=skipped,
        lid_phones=lid_phones,
        late_chats=frozenset(late_chats),
    )


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
