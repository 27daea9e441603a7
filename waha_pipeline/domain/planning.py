"""Channel planning: which chats are imported, in which chunk, over which window (SPEC 6.1, 6.2, 7).

Pure: the caller passes the raw chat list, the lid mapping and `plan_time`; nothing here reads a clock.
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
