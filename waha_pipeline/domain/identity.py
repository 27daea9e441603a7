"""Contacts of one chunk: which contact each chat's messages belong to, and its name (SPEC 6.3).

Resolves within the plan only (phone, lid, group id); merging with contacts already stored is the store's job.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import CONTACT_COLUMNS, conform, empty_frame
from waha_pipeline.domain.plans import PlannedChat


_NUMBER_NOISE = re.compile(r"[+\-() ]")


def is_just_the_number(name: str | None) -> bool:
    """True when a name carries no more than the phone number (only digits after removing `+ - ( )` and spaces).

    WAHA fills a chat's name with the number when the address book has none; such a name must not hide a
    real push name. An empty or missing name counts as "just the number" (it says nothing either).
    """
    if not name:
        return True
    rest = _NUMBER_NOISE.sub("", name)
    return rest == "" or (rest.isascii() and rest.isdigit())


def chat_contact_id(tenant_id: str, chat: PlannedChat) -> str:
    """The contact a chat belongs to: by phone when known (so @c.us and mapped @lid chats meet), else lid, else group."""
    return ids.contact_id(tenant_id, phone=chat.phone, lid=chat.lid, group_id=chat.group_id)


def chat_name(chats: Sequence[PlannedChat]) -> str | None:
    """A real chat name, preferring the @c.us chat's (the address-book name) over a @lid chat's."""
    named = [c for c in chats if not is_just_the_number(c.name)]
    named.sort(key=lambda c: (c.kind != "direct", c.chat_id))
    return named[0].name if named else None


def _members(tenant_id: str, chats: Sequence[PlannedChat]) -> dict[str, list[PlannedChat]]:
    members: dict[str, list[PlannedChat]] = {}
    for chat in chats:
        members.setdefault(chat_contact_id(tenant_id, chat), []).append(chat)
    return members


def named_by_push(tenant_id: str, chats: Sequence[PlannedChat]) -> set[str]:
    """Contacts whose name can only come from a push name: no chat of theirs has a real name and none is a group.
    Only theirs need the stored push names (a query over their whole history)."""
    return {
        cid for cid, group in _members(tenant_id, chats).items()
        if chat_name(group) is None and not any(c.group_id for c in group)
    }


def _latest_push_names(messages: pd.DataFrame, stored: pd.DataFrame | None = None) -> dict[str, str]:
    """contact_id -> push name of its latest inbound message that has one, ordered by (sent_at, external_id).

    `stored` (contact_id, sent_at, external_id, push_name) adds each contact's latest stored candidate, so an
    import that fetched only part of the history still picks the name a clean import would.
    """
    frames = []
    if "push_name" in messages.columns and not messages.empty:
        push = messages["push_name"].astype("string").str.strip()
        keep = ~messages["from_me"].astype(bool).to_numpy() & push.fillna("").ne("").to_numpy()
        frames.append(pd.DataFrame({
            "contact_id": messages["contact_id"].to_numpy()[keep],
            "sent_at": messages["sent_at"].to_numpy()[keep],
            "external_id": messages["external_id"].to_numpy()[keep],
            "push_name": push.to_numpy()[keep],
        }))
    if stored is not None and not stored.empty:
        frames.append(stored.loc[:, ["contact_id", "sent_at", "external_id", "push_name"]])
    if not frames:
        return {}
    inbound = pd.concat(frames, ignore_index=True)
    latest = inbound.sort_values(["contact_id", "sent_at", "external_id"]).drop_duplicates("contact_id", keep="last")
    return dict(zip(latest["contact_id"], latest["push_name"], strict=True))


def peers_outside(
    chunk: Sequence[PlannedChat], plan: Mapping[str, PlannedChat], lid_phones: Mapping[str, str]
) -> tuple[PlannedChat, ...]:
    """The plan's chats outside the chunk that belong to one of its contacts once `lid_phones` apply.

    A plan keeps a contact's chats in one chunk, but a lid's phone that only messages reveal (SPEC 6.5) joins
    chats of two chunks: the contact is named from both (a @c.us chat's name wins, SPEC 6.3).
    """
    inside = {c.chat_id for c in chunk}
    phones = {c.phone for c in chunk if c.phone}
    peers = [plan[f"{p}@c.us"] for p in sorted(phones) if f"{p}@c.us" in plan and f"{p}@c.us" not in inside]
    for lid, phone in sorted(lid_phones.items()):
        chat = plan.get(f"{lid}@lid")
        if phone in phones and chat is not None and chat.chat_id not in inside:
            peers.append(chat if chat.phone else dataclasses.replace(chat, phone=phone))
    return tuple(peers)


def with_learned_phones(chats: Sequence[PlannedChat], lid_phones: Mapping[str, str]) -> tuple[PlannedChat, ...]:
    """The chats with the lid/phone pairs learned after planning (from messages, SPEC 6.5) filled in where the
    plan knew none."""
    if not lid_phones:
        return tuple(chats)
    lid_of = {phone: lid for lid, phone in sorted(lid_phones.items(), reverse=True)}  # smallest lid wins
    out = []
    for chat in chats:
        if chat.kind == "lid" and chat.phone is None and chat.lid in lid_phones:
            chat = dataclasses.replace(chat, phone=lid_phones[chat.lid])
        elif chat.kind == "direct" and chat.lid is None and chat.phone in lid_of:
            chat = dataclasses.replace(chat, lid=lid_of[chat.phone])
        out.append(chat)
    return tuple(out)


def resolve_contacts(
    chats: Sequence[PlannedChat],
    messages: pd.DataFrame,
    *,
    tenant_id: str,
    stored_chats: Collection[str] = (),
    stored_push_names: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Contacts of the chunk (CONTACT_COLUMNS) and the messages with `contact_id` filled.

    Only contacts with at least one message are returned (SPEC 6.3): in `messages`, or already stored for one
    of `stored_chats` (an incremental import must still merge and name a contact that got nothing new). A group's push names belong
    to its participants, so a group is never named after one of them. A message whose chat is not among
    `chats` is a caller bug and raises ValueError rather than producing an orphan row.
    """
    members = _members(tenant_id, chats)
    contact_of_chat = {chat.chat_id: cid for cid, group in members.items() for chat in group}

    out = messages.copy()
    mapped = out["chat_id"].map(contact_of_chat)
    if mapped.isna().any():
        strays = sorted(set(out.loc[mapped.isna(), "chat_id"].astype(str)))
        raise ValueError(f"messages of chats that are not in the chunk: {strays[:5]}")
    out["contact_id"] = mapped.astype("string")
    with_messages = set(out["contact_id"].unique()) | {contact_of_chat[c] for c in stored_chats if c in contact_of_chat}
    if not with_messages:
        return empty_frame(CONTACT_COLUMNS), out

    push_names = _latest_push_names(out, stored_push_names)
    rows = []
    for cid in sorted(with_messages):
        group = members[cid]
        lids = sorted(c.lid for c in group if c.lid)
        group_id = next((c.group_id for c in group if c.group_id), None)
        name = chat_name(group) or (None if group_id else push_names.get(cid))
        rows.append(
            {
                "id": cid,
                "phone": next((c.phone for c in group if c.phone), None),
                "lid": lids[0] if lids else None,
                "group_id": group_id,
                "name": name,
            }
        )
    return conform(pd.DataFrame(rows, columns=list(CONTACT_COLUMNS)), CONTACT_COLUMNS), out
