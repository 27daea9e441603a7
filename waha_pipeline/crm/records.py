"""Frozen records the CRM store hands out; plain data, no SQLAlchemy rows leak past `crm/`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChannelRecord:
    id: str
    tenant_id: str
    waha_session: str
    name: str | None
    session_timeout_minutes: int
    slug: str = ""  # the channel's partition key and chunk key prefix, stored once
    account: str | None = None  # digits of the session's me.id; None until an import learns it
    waha_server: str | None = None  # base URL of the WAHA server last imported from, without credentials

    def label(self) -> str:
        """`slug (account …4321, server)`: how a channel is named when a session name fits several."""
        account = f"…{self.account[-4:]}" if self.account else "account unknown"
        return f"{self.slug} ({account}, {self.waha_server or 'server unknown'})"


@dataclass(frozen=True)
class CommitResult:
    """What one `commit_chunk` did. `messages_inserted` is 0 on an idempotent re-run."""

    messages_inserted: int
    messages_total: int
    sessions: int  # sessions of the chunk's contacts in the channel after recomputation
    contacts: int
    rejects: int
    contacts_merged: int = 0


@dataclass(frozen=True)
class PlanRecord:
    id: str
    tenant_id: str
    channel_id: str
    channel_slug: str
    plan_time: int  # Unix seconds
    window_start: int | None  # None = whole history (--days 0)
    window_end: int
    days: int
    session_timeout_minutes: int
    chunk_size: int
    include_groups: bool
    all_chats: bool
    chats_total: int
    skipped: dict[str, int] = field(default_factory=dict)
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class ChunkRecord:
    plan_id: str
    chunk_key: str
    chunk_index: int
    chat_ids: tuple[str, ...]
    status: str  # pending | committed | failed
    chats: int
    messages: int
    rejects: int
    sessions: int
    contacts: int
    attempts: int
    last_error: str | None
    committed_at: dt.datetime | None
    updated_at: dt.datetime | None
    skipped: dict[str, int] | None = None  # rows served that are neither messages nor rejects, by reason
