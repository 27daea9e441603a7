"""Channel planning: which chats are imported, in which chunk, over which window (SPEC 6.1, 6.2, 7).

Pure: the caller passes the raw chat list, the lid mapping and `plan_time`; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from waha_pipeline.domain.chat_ids import ChatKind, classify_chat_id, is_importable, normalize_chat_id, user_part
from waha_pipeline.domain.coverage import Coverage, up_to_date
from waha_pipeline.domain.identity import is_just_the_number
from waha_pipeline.domain.plans import ChannelPlan, ChunkPlan, PlannedChat


# ---------------------------------------------------------------------------------------------------------------
# Planning functions


_SLUG_MAX = 60
_DAY = 86_400


def channel_slug(waha_session: str, account: str | None = None) -> str:
    """Partition-key-safe name of a channel: `[a-z0-9-]`, at most 60 chars, never empty, deterministic.

    Without `account`: the slug of the session name alone (what channels recorded before the WhatsApp account
    was part of a channel's identity keep). A session name that is already a valid slug is kept as is; any lossy
    mapping (case, punctuation, length) appends `-` + 6 hex chars of sha1(name), so "Acme Sales" and
    "acme sales!" never share chunk keys.

    With `account` (the digits of the session's `me.id`): that slug + `-` + 6 hex chars of sha1(account), so two
    WAHA servers that both run a session named `default` give their channels different slugs and chunk keys.
    """
    base = re.sub(r"[^a-z0-9]+", "-", waha_session.lower()).strip("-")
    if base == waha_session and 0 < len(base) <= _SLUG_MAX:
        slug = base
    else:
        digest = hashlib.sha1(waha_session.encode("utf-8")).hexdigest()[:6]
        base = base[: _SLUG_MAX - 7].rstrip("-")
        slug = f"{base}-{digest}" if base else digest
    if account is None:
        return slug
    suffix = hashlib.sha1(account.encode("utf-8")).hexdigest()[:6]
    return f"{slug[: _SLUG_MAX - 7].rstrip('-')}-{suffix}"


def chunk_key(slug: str, index: int) -> str:
    return f"{slug}.c{index:04d}"


def slug_of_chunk(key: str) -> str:
    """The channel slug a chunk key starts with (slugs hold no dot, so the last one separates them)."""
    return key.rsplit(".", 1)[0]


def plan_window(plan_time: int, days: int) -> tuple[int | None, int]:
    """Inclusive `[plan_time - days*86400, plan_time]`; days 0 drops the lower bound only (SPEC 6.1)."""
    if days < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    return (None if days == 0 else plan_time - days * _DAY), plan_time


def _digits(value: str | None) -> str | None:
    """Accept `'5511...'`, `'5511...@c.us'` or `'2039...@lid'` from the lid mapping; keep digits only."""
    if not value or not isinstance(value, str):
        return None
    normalized = normalize_chat_id(value) if "@" in value else value.strip()
    user = user_part(normalized) if normalized else ""
    return user if user.isascii() and user.isdigit() else None


def _last_message_at(raw: dict) -> int | None:
    """The chat's last activity in Unix seconds as the chat list gives it (NOWEB/GOWS `conversationTimestamp`,
    WEBJS `timestamp`); None when absent or not a number, which makes the chat count as changed."""
    value = raw.get("conversationTimestamp", raw.get("timestamp"))
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def chat_fingerprint(chat: PlannedChat, session_timeout_minutes: int) -> str:
    """Everything besides its messages that a chat's committed rows were computed from: its identity as planned
    (name, phone, lid) and the timeout its sessions were split with."""
    fields = [chat.chat_id, chat.kind, chat.name, chat.phone, chat.lid, chat.group_id, session_timeout_minutes]
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()


def _name(raw: object) -> str | None:
    return (raw.strip() or None) if isinstance(raw, str) else None


def _name_rank(name: str | None) -> tuple[bool, bool, str]:
    """Deterministic choice among duplicate listings of one chat: a real name beats a number beats nothing."""
    return (name is None, is_just_the_number(name), name or "")


def _contact_key(chat: PlannedChat) -> str:
    if chat.phone:
        return f"p:{chat.phone}"
    if chat.lid:
        return f"l:{chat.lid}"
    return f"g:{chat.group_id or chat.chat_id}"


def _chunk_groups(groups: list[list[PlannedChat]], chunk_size: int) -> list[list[PlannedChat]]:
    """Fill chunks up to chunk_size without ever splitting a contact's chats (an oversized one stands alone)."""
    chunks: list[list[PlannedChat]] = []
    current: list[PlannedChat] = []
    for group in groups:
        if current and len(current) + len(group) > chunk_size:
            chunks.append(current)
            current = []
        current.extend(group)
    if current:
        chunks.append(current)
    return chunks


def plan_channel(
    raw_chats: Iterable[dict],
    lid_to_phone: Mapping[str, str | None],
    *,
    waha_session: str,
    plan_time: int,
    days: int,
    chunk_size: int,
    session_timeout_minutes: int,
    include_groups: bool,
    known: Mapping[str, Coverage] | None = None,
    learned_phones: Mapping[str, str] | None = None,
) -> ChannelPlan:
    """Filter, resolve and chunk a channel's chat list; the same inputs in any order give the same plan.

    Duplicate listings of one chat collapse to one (the best name wins, so listing order cannot change the
    plan; each extra listing is counted as skipped "duplicate"). A contact's @c.us chat and the @lid chats
    mapped to its phone land in one chunk, so one chunk owns all of that contact's messages and sessions.

    `known` is the CRM's coverage per chat: a contact whose every chat is `coverage.up_to_date` is left out of the
    plan (counted as skipped "up_to_date"), so re-importing an unchanged channel fetches no messages. Groups are
    always imported: their senders' identities depend on more than the group's own listing.

    `learned_phones` (lid digits -> phone digits) are the phones earlier imports learned for lids, also from
    phones WAHA gave inside messages (SPEC 6.5); they apply where WAHA's lid mapping gives no phone, so a lid
    chat resolves to the contact it was merged into.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    window_start, window_end = plan_window(plan_time, days)
    phone_of: dict[str, str | None] = dict((learned_phones or {}).items())
    for raw_lid, raw_phone in lid_to_phone.items():
        lid = _digits(raw_lid)
        if lid:
            phone_of[lid] = _digits(raw_phone) or phone_of.get(lid)
    lid_of: dict[str, str] = {}
    for lid, phone in sorted(phone_of.items()):
        if phone:
            lid_of.setdefault(phone, lid)  # smallest lid wins if WAHA maps two lids to one phone

    skipped: Counter[str] = Counter()
    names: dict[str, str | None] = {}
    kinds: dict[str, ChatKind] = {}
    last_message_at: dict[str, int | None] = {}
    for raw in raw_chats:
        chat_id = normalize_chat_id(raw.get("id")) if isinstance(raw, dict) else None
        if chat_id is None:
            skipped["no_id"] += 1
            continue
        name = _name(raw.get("name"))
        at = _last_message_at(raw)
        if chat_id in names:
            skipped["duplicate"] += 1
            names[chat_id] = min(names[chat_id], name, key=_name_rank)
            before = last_message_at[chat_id]
            last_message_at[chat_id] = None if before is None or at is None else max(before, at)
            continue
        names[chat_id] = name
        kinds[chat_id] = classify_chat_id(chat_id)
        last_message_at[chat_id] = at

    planned: list[PlannedChat] = []
    for chat_id, kind in kinds.items():
        if not is_importable(kind, include_groups=include_groups):
            skipped[kind.value] += 1
            continue
        digits = user_part(chat_id)
        at = last_message_at[chat_id]
        if kind is ChatKind.DIRECT:
            chat = PlannedChat(chat_id, kind.value, names[chat_id], phone=digits, lid=lid_of.get(digits),
                               last_message_at=at)
        elif kind is ChatKind.LID:
            chat = PlannedChat(chat_id, kind.value, names[chat_id], phone=phone_of.get(digits), lid=digits,
                               last_message_at=at)
        else:
            chat = PlannedChat(chat_id, kind.value, names[chat_id], phone=None, lid=None, group_id=chat_id,
                               last_message_at=at)
        planned.append(chat)

    planned.sort(key=lambda c: (_contact_key(c), c.chat_id))
    groups = [list(g) for _, g in itertools.groupby(planned, key=_contact_key)]
    if known:
        window = (window_start, window_end)

        def unchanged(chat: PlannedChat) -> bool:
            fingerprint = chat_fingerprint(chat, session_timeout_minutes)
            return chat.kind != ChatKind.GROUP.value and up_to_date(
                window, known.get(chat.chat_id), last_message_at[chat.chat_id], fingerprint
            )

        changed = [g for g in groups if not all(map(unchanged, g))]
        if len(changed) < len(groups):
            skipped["up_to_date"] = sum(map(len, groups)) - sum(map(len, changed))
            groups = changed
    slug = channel_slug(waha_session)
    chunks = tuple(
        ChunkPlan(key=chunk_key(slug, k), index=k, chats=tuple(chats))
        for k, chats in enumerate(_chunk_groups(groups, chunk_size))
    )
    return ChannelPlan(
        waha_session=waha_session,
        channel_slug=slug,
        plan_time=plan_time,
        window_start=window_start,
        window_end=window_end,
        days=days,
        chunk_size=chunk_size,
        session_timeout_minutes=session_timeout_minutes,
        include_groups=include_groups,
        chunks=chunks,
        skipped=dict(sorted(skipped.items())),
    )
