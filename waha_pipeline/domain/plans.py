"""What a plan holds: its chats with the identity each resolves to, its chunks, its window and settings.

Types only, shared by planning (which makes plans), identity and batch (which read their chats) and the CRM
ledger (which records them); how a plan is made is domain/planning.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlannedChat:
    """One chat of a plan with the identity it resolves to (known at plan time from WAHA's lid mapping)."""

    chat_id: str  # normalized: "<digits>@c.us", "<digits>@lid" or "...@g.us"
    kind: str  # chat_ids.ChatKind value of an importable kind: "direct", "lid" or "group"
    name: str | None
    phone: str | None  # digits; for a lid chat the mapped phone when WAHA knows it
    lid: str | None  # digits; for a direct chat the lid WAHA maps to its phone, when known
    group_id: str | None = None
    # The chat list's last-message time: evidence of where the chat's messages end (the fetch reads past
    # empty pages until it has seen this time). Not part of the chat's identity or fingerprint.
    last_message_at: int | None = None


@dataclass(frozen=True)
class ChunkPlan:
    key: str  # "{channel_slug}.c{index:04d}"
    index: int
    chats: tuple[PlannedChat, ...]

    @property
    def chat_ids(self) -> list[str]:
        return [c.chat_id for c in self.chats]


@dataclass(frozen=True)
class ChannelPlan:
    waha_session: str
    channel_slug: str
    plan_time: int  # whole second, UTC
    window_start: int | None  # None = the whole history (--days 0)
    window_end: int  # == plan_time
    days: int
    chunk_size: int
    session_timeout_minutes: int
    include_groups: bool
    chunks: tuple[ChunkPlan, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of chats not imported
    all_chats: bool = False  # no chat left out as up to date, and each read over the whole window (a deep pass)
