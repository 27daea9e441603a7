"""The CRM rows one clean import of a simulated channel must produce (SPEC 6), computed by plain code.

Why separate from the importer: tests compare the importer's database against this. It reads the
generation facts kept on each StoredMessage (true direction, content type, push name, defect) and the
session's lid map, never the importer's parsing, so a parsing or session-splitting mistake shows up as a diff.

Engine facts (SPEC 6.5, 6.8): only real messages count (rows that are not messages are skipped and counted per
reason in `skipped_messages`); `sent_at` is the true time even where the wire hides it (WEBJS `_data.t`, NOWEB
Long objects, GOWS `Info.Timestamp`); a message whose time is in no field at all is a reject; a @lid chat whose
messages carry the phone (GOWS `Info.SenderAlt`, NOWEB `_data.key.remoteJidAlt`) is that phone's contact; a chat
the engine's chat list does not show (NOWEB 2024.10 without a conversationTimestamp) cannot be imported.

Reading of SPEC 6.3 where it is silent: a contact's name candidates come from all of its imported chats
(with or without messages in the window); a @c.us chat's usable name wins over a @lid chat's, then the push name of
the contact's latest inbound message in the window (ties broken by external id), else None.
"""

from __future__ import annotations

import re

from waha_pipeline.simulator.models import (
    DIRECT_KINDS, GROUP, LID_ALT, LID_KINDS, Dataset, SimChat, StoredMessage, chat_listed,
)

_NUMBER_CHARS = re.compile(r"[+\-() ]")


def is_just_the_number(name: str | None) -> bool:
    """True when the name carries nothing but a phone number (or nothing at all): SPEC 6.3."""
    if name is None:
        return True
    stripped = _NUMBER_CHARS.sub("", name)
    return stripped == "" or stripped.isdigit()


def _contact_key(chat: SimChat, lids: dict[str, str], pn_to_lid: dict[str, str], engine: str) -> tuple[tuple, dict]:
    digits = chat.id.split("@", 1)[0]
    if chat.kind in DIRECT_KINDS:
        return ("phone", digits), {"phone": digits, "lid": pn_to_lid.get(digits), "group_id": None}
    if chat.kind in LID_KINDS:
        phone = lids.get(digits)
        if chat.kind == LID_ALT and engine in ("gows", "noweb"):  # every message of it carries the phone
            phone = chat.alt_phone
        if phone is not None:
            return ("phone", phone), {"phone": phone, "lid": digits, "group_id": None}
        return ("lid", digits), {"phone": None, "lid": digits, "group_id": None}
    return ("group", chat.id), {"phone": None, "lid": None, "group_id": chat.id}


def ground_truth(
    dataset: Dataset,
    session: str,
    *,
    window_start: int | None,
    window_end: int,
    timeout_minutes: int = 30,
    plan_time: int | None = None,
    include_groups: bool = False,
    tenant_id: str = "default",
) -> dict:
    """Expected messages, rejects, contacts and sessions of one channel for one window (both ends inclusive)."""
    sess = dataset.sessions.get(session)
    if sess is None:
        raise KeyError(f"unknown simulated session {session!r}")
    plan_time = window_end if plan_time is None else plan_time
    timeout = timeout_minutes * 60
    kinds = DIRECT_KINDS | LID_KINDS | ({GROUP} if include_groups else frozenset())

    messages: list[dict] = []
    rejects: list[dict] = []
    contacts: dict[tuple, dict] = {}
    per_contact: dict[tuple, list[StoredMessage]] = {}
    names: dict[tuple, list[tuple[int, str, str]]] = {}  # key -> [(priority, chat id, name)]
    skipped: dict[str, int] = {}
    skipped_rows: dict[str, int] = {}
    spec = dataset.spec

    for chat in sess.chats:
        if chat.kind not in kinds:
            skipped[chat.kind] = skipped.get(chat.kind, 0) + 1
            continue
        if not chat_listed(chat, spec):
            skipped["unlisted"] = skipped.get("unlisted", 0) + 1
            continue
        key, ident = _contact_key(chat, sess.lids, sess.pn_to_lid, spec.engine)
        seen: set[str] = set()
        imported = 0
        for e in chat.entries:
            if e.blob is None:  # dropped by the engine after slicing: never served
                continue
            if (window_start is not None and e.ts < window_start) or e.ts > window_end:
                continue
            if e.row is not None:  # served, but not a message
                skipped_rows[e.row] = skipped_rows.get(e.row, 0) + 1
                continue
            if e.defect is not None:
                rejects.append({"chat_id": chat.id, "external_id": e.external_id, "defect": e.defect})
                continue
            assert e.external_id is not None
            if e.external_id in seen:
                continue
            seen.add(e.external_id)
            imported += 1
            messages.append({
                "external_id": e.external_id, "chat_id": chat.id, "from_me": e.from_me, "sent_at": e.ts,
                "content_type": e.content_type, "body": e.body, "sender_id": e.participant,
            })
            per_contact.setdefault(key, []).append(e)
        if imported:
            known = contacts.setdefault(key, dict(ident))
            if known["lid"] is None and ident["lid"] is not None:  # the phone's contact also carries the lid
                known["lid"] = ident["lid"]
        # Every imported chat of the contact names it, with or without messages in the window: the name then
        # does not depend on the window, so a narrow import followed by a wide one converges either way round.
        if not is_just_the_number(chat.name):
            assert chat.name is not None
            names.setdefault(key, []).append((0 if chat.kind in DIRECT_KINDS else 1, chat.id, chat.name))

    out_contacts: list[dict] = []
    out_sessions: list[dict] = []
    for key, ident in contacts.items():
        msgs = sorted(per_contact[key], key=lambda e: (e.ts, e.external_id))
        if key in names:
            name: str | None = min(names[key])[2]
        else:
            inbound = [e for e in msgs if not e.from_me and e.push_name]
            name = inbound[-1].push_name if inbound else None
        out_contacts.append({**ident, "name": name})
        contact_ref = dict(ident)
        start = 0
        for i in range(1, len(msgs) + 1):
            if i == len(msgs) or msgs[i].ts - msgs[i - 1].ts > timeout:
                part = msgs[start:i]
                ended = part[-1].ts
                mine = sum(1 for e in part if e.from_me)
                out_sessions.append({
                    "contact": contact_ref, "started_at": part[0].ts, "ended_at": ended,
                    "message_count": len(part), "messages_from_contact": len(part) - mine,
                    "messages_from_agent": mine, "first_external_id": part[0].external_id,
                    "status": "closed" if ended < plan_time - timeout else "open",
                })
                start = i

    def ckey(c: dict) -> tuple:
        return (c["phone"] or "", c["lid"] or "", c["group_id"] or "")

    messages.sort(key=lambda m: (m["chat_id"], m["sent_at"], m["external_id"]))
    rejects.sort(key=lambda r: (r["chat_id"], r["external_id"] or ""))
    out_contacts.sort(key=ckey)
    out_sessions.sort(key=lambda s: (ckey(s["contact"]), s["started_at"]))
    return {
        "session": session,
        "tenant_id": sess.tenant_id or tenant_id,
        "window_start": window_start,
        "window_end": window_end,
        "plan_time": plan_time,
        "timeout_minutes": timeout_minutes,
        "include_groups": include_groups,
        "skipped_chats": skipped,
        "skipped_messages": skipped_rows,
        "messages": messages,
        "rejects": rejects,
        "contacts": out_contacts,
        "sessions": out_sessions,
    }
