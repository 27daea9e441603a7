"""What one chunk commits: the frames passed between the stages and into the CRM store.

Frames are columnar (pandas) so that a chunk of many thousand messages costs no per-row Python objects
downstream of parsing, and so that every stage can be persisted as Arrow files and re-read by a later stage.
Times are Unix seconds (int64, UTC) until the store converts them to timestamps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from waha_pipeline.domain.plans import PlannedChat


# contact_id is deterministic (ids.contact_id); phone/lid are digits only; group_id is the full "...@g.us" id.
CONTACT_COLUMNS: dict[str, str] = {
    "id": "string",
    "phone": "string",
    "lid": "string",
    "group_id": "string",
    "name": "string",
}

# One row per message to commit, already deduplicated by external_id.
MESSAGE_COLUMNS: dict[str, str] = {
    "id": "string",  # ids.message_id(channel_id, external_id)
    "contact_id": "string",
    "chat_id": "string",  # normalized chat the message was listed and fetched under
    "external_id": "string",  # WAHA message id
    "from_me": "bool",
    "sent_at": "int64",  # WAHA timestamp, Unix seconds
    "content_type": "string",
    "body": "string",
    "sender_id": "string",  # group participant, NULL in 1:1 chats
    "push_name": "string",  # sender's profile name on inbound messages: names a contact without a chat name
}

# Sessions per (channel, contact), derived from every stored + new message of the contact (SPEC 6.4).
SESSION_COLUMNS: dict[str, str] = {
    "id": "string",
    "contact_id": "string",
    "started_at": "int64",
    "ended_at": "int64",
    "message_count": "int64",
    "messages_from_contact": "int64",
    "messages_from_agent": "int64",
    "status": "string",  # open | closed
}

# Malformed input kept with its reason (SPEC 6.8); external_id NULL when the message had none.
REJECT_COLUMNS: dict[str, str] = {
    "id": "string",
    "chat_id": "string",
    "external_id": "string",
    "reason": "string",
    "payload": "string",  # raw JSON as received
}


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    return _empty_template(tuple(columns.items())).copy()


@functools.cache
def _empty_template(columns: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """Built once per shape: an empty Arrow-backed column costs about a millisecond to create."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns})


def conform(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Select and type the contract columns, so every producer hands over the same shape."""
    if frame.empty:
        return empty_frame(columns)
    return frame.loc[:, list(columns)].astype(columns)


@dataclass(frozen=True)
class ChunkContext:
    """Who the chunk belongs to and the plan settings it must use (fixed once per plan, SPEC 6.1)."""

    tenant_id: str
    channel_id: str
    plan_id: str
    chunk_key: str
    plan_time: int
    window_start: int | None  # None = whole history (--days 0)
    window_end: int
    session_timeout_minutes: int
    all_chats: bool = False  # read each chat over the whole window, also what the CRM covers (a deep pass)


@dataclass
class ChunkBatch:
    """Everything one chunk commits in one transaction, plus the counts reported for it."""

    context: ChunkContext
    contacts: pd.DataFrame = field(default_factory=lambda: empty_frame(CONTACT_COLUMNS))
    messages: pd.DataFrame = field(default_factory=lambda: empty_frame(MESSAGE_COLUMNS))
    rejects: pd.DataFrame = field(default_factory=lambda: empty_frame(REJECT_COLUMNS))
    chats: int = 0
    planned_chats: tuple[PlannedChat, ...] = ()  # every chat of the chunk: its window is covered once this commits
    # chat -> [((gte, lte), proven_to), ...] as the fetch read it; None = the whole window counts as read
    reads: Mapping[str, Sequence[tuple[tuple[int | None, int], int | None]]] | None = None
    frozen_chats: frozenset[str] = frozenset()  # chats whose coverage must not move (rows stamped after plan time)
    skipped: Mapping[str, int] | None = None  # rows WAHA served that are neither messages nor rejects, by reason
    # every chat of the plan by id, read (through the commit's own connection) only when a lid's phone learned from
    # messages joins chats of two chunks
    plan_chats: Callable[[Any], Mapping[str, PlannedChat]] | None = None
