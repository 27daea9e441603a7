"""What the CRM holds for one committed chunk, checked against what the import promises (SPEC 7).

Three invariants, each an `Outcome` naming its counts and the first few offending ids, so a failure says where to
look:

- accounted: every row WAHA served for the chunk's chats inside the window is a message, a reject or a skipped row
  (fetched == committed messages + rejects + skipped, all reasons), and the CRM still holds at least the messages the
  ledger says the chunk committed;
- sessions: every message of the chunk's contacts belongs to one session of its own contact and channel whose
  span contains it, and every such session's counts and times are what its messages give;
- contacts: no contact the chunk's chats identify is without a message in the CRM (contacts are tenant-wide, so a
  message in any channel counts).

Plain SQLAlchemy Core, the same on PostgreSQL and SQLite; reading only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from waha_pipeline.crm.records import ChunkRecord, PlanRecord
from waha_pipeline.crm.schema import contacts, messages, sessions, to_seconds, to_utc
from waha_pipeline.domain.plans import PlannedChat

FIRST = 10  # offending ids named in a check's metadata


@dataclass(frozen=True)
class Outcome:
    passed: bool
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    offenders: list[str] = field(default_factory=list)  # the first FIRST offending ids, "kind id: what"


def accounted(chunk: ChunkRecord, fetched: int | None, stored_messages: int) -> Outcome:
    """Pure: the chunk's ledger counts against the rows fetched for it and the messages the CRM still holds."""
    skipped = sum((chunk.skipped or {}).values())
    counts = {"fetched": -1 if fetched is None else fetched, "messages": chunk.messages, "rejects": chunk.rejects,
              "skipped": skipped, "stored_messages": stored_messages}
    problems = []
    if chunk.status != "committed":
        problems.append(f"chunk {chunk.chunk_key}: status {chunk.status}, not committed")
    if fetched is None:
        problems.append(f"chunk {chunk.chunk_key}: no fetched_messages count recorded")
    elif fetched != chunk.messages + chunk.rejects + skipped:
        problems.append(f"chunk {chunk.chunk_key}: fetched {fetched} != messages {chunk.messages} + rejects "
                        f"{chunk.rejects} + skipped {skipped}")
    if stored_messages < chunk.messages:
        problems.append(f"chunk {chunk.chunk_key}: the CRM holds {stored_messages} messages of its chats in the "
                        f"plan window, the chunk committed {chunk.messages}")
    if problems:
        return Outcome(False, problems[0], counts, problems[:FIRST])
    return Outcome(True, f"{fetched} fetched = {chunk.messages} messages + {chunk.rejects} rejects + "
                         f"{skipped} skipped", counts)


def stored_message_count(conn: sa.Connection, plan: PlanRecord, chat_ids: Collection[str]) -> int:
    """Messages of these chats in the plan's channel and window (inclusive bounds, as the plan reads them)."""
    query = sa.select(sa.func.count()).select_from(messages).where(
        messages.c.channel_id == plan.channel_id, messages.c.chat_id.in_(list(chat_ids)),
        messages.c.sent_at <= to_utc(plan.window_end),
    )
    if plan.window_start is not None:
        query = query.where(messages.c.sent_at >= to_utc(plan.window_start))
    return int(conn.execute(query).scalar_one())


def chunk_contact_ids(conn: sa.Connection, plan: PlanRecord, chats: Sequence[PlannedChat]) -> list[str]:
    """Contacts of the chunk: those of its chats' messages in the channel, and those its chats' identities name."""
    chat_ids = [c.chat_id for c in chats]
    by_message = sa.select(messages.c.contact_id).where(
        messages.c.channel_id == plan.channel_id, messages.c.chat_id.in_(chat_ids)
    ).distinct()
    phones = sorted({c.phone for c in chats if c.phone})
    lids = sorted({c.lid for c in chats if c.lid})
    groups = sorted({c.group_id for c in chats if c.group_id})
    by_identity = sa.select(contacts.c.id).where(
        contacts.c.tenant_id == plan.tenant_id,
        sa.or_(contacts.c.phone.in_(phones), contacts.c.lid.in_(lids), contacts.c.group_id.in_(groups)),
    )
    ids = {str(r) for r in conn.execute(by_message).scalars()} | {str(r) for r in conn.execute(by_identity).scalars()}
    return sorted(ids)


def sessions_consistent(conn: sa.Connection, channel_id: str, contact_ids: Collection[str]) -> Outcome:
    """Every message of these contacts in the channel is in one session of its own contact that spans it; every
    session of theirs has the counts and times its messages give (a session without messages is wrong too)."""
    ids = list(contact_ids)
    m, s = messages, sessions
    misplaced = conn.execute(
        sa.select(m.c.id, m.c.session_id, s.c.id.label("found"))
        .select_from(m.outerjoin(s, s.c.id == m.c.session_id))
        .where(m.c.channel_id == channel_id, m.c.contact_id.in_(ids))
        .where(sa.or_(
            s.c.id.is_(None), s.c.contact_id != m.c.contact_id, s.c.channel_id != m.c.channel_id,
            m.c.sent_at < s.c.started_at, m.c.sent_at > s.c.ended_at,
        ))
        .order_by(m.c.id)
    ).all()
    offenders = [
        f"message {r.id}: " + ("no session" if r.session_id is None else
                               f"session {r.session_id} missing" if r.found is None else
                               f"session {r.session_id} is another contact's or does not span it")
        for r in misplaced[:FIRST]
    ]
    agg = (
        sa.select(
            m.c.session_id.label("session_id"),
            sa.func.count().label("n"),
            sa.func.sum(sa.case((m.c.from_me, 0), else_=1)).label("from_contact"),
            sa.func.sum(sa.case((m.c.from_me, 1), else_=0)).label("from_agent"),
            sa.func.min(m.c.sent_at).label("first"),
            sa.func.max(m.c.sent_at).label("last"),
        )
        .where(m.c.channel_id == channel_id, m.c.contact_id.in_(ids), m.c.session_id.is_not(None))
        .group_by(m.c.session_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(s.c.id, s.c.message_count, s.c.messages_from_contact, s.c.messages_from_agent, s.c.started_at,
                  s.c.ended_at, agg.c.n, agg.c.from_contact, agg.c.from_agent, agg.c.first, agg.c.last)
        .select_from(s.outerjoin(agg, agg.c.session_id == s.c.id))
        .where(s.c.channel_id == channel_id, s.c.contact_id.in_(ids))
        .order_by(s.c.id)
    ).all()
    wrong = [r for r in rows if _session_differs(r)]
    for r in wrong[: max(0, FIRST - len(offenders))]:
        offenders.append(
            f"session {r.id}: stored count {r.message_count} ({r.messages_from_contact} contact / "
            f"{r.messages_from_agent} agent), its messages give {r.n or 0} "
            f"({r.from_contact or 0} / {r.from_agent or 0})"
            + ("" if _same_span(r) else ", span differs")
        )
    counts = {"contacts": len(ids), "sessions": len(rows), "messages_misplaced": len(misplaced),
              "sessions_wrong": len(wrong)}
    if misplaced or wrong:
        return Outcome(False, f"{len(misplaced)} message(s) outside their session, {len(wrong)} session(s) not "
                              "what their messages give", counts, offenders)
    return Outcome(True, f"{len(rows)} session(s) of {len(ids)} contact(s) match their messages", counts)


def _same_span(r: sa.Row) -> bool:  # type: ignore[type-arg]
    if r.first is None or r.last is None:
        return False
    return (to_seconds(r.started_at), to_seconds(r.ended_at)) == (to_seconds(r.first), to_seconds(r.last))


def _session_differs(r: sa.Row) -> bool:  # type: ignore[type-arg]
    given = (int(r.n or 0), int(r.from_contact or 0), int(r.from_agent or 0))
    return given != (r.message_count, r.messages_from_contact, r.messages_from_agent) or not _same_span(r)


def contacts_have_messages(conn: sa.Connection, contact_ids: Collection[str]) -> Outcome:
    """Every one of these contacts has a message in some channel of the CRM."""
    ids = list(contact_ids)
    has_message = sa.exists().where(messages.c.contact_id == contacts.c.id)
    query = sa.select(contacts.c.id).where(contacts.c.id.in_(ids), ~has_message).order_by(contacts.c.id)
    orphans = [str(r) for r in conn.execute(query).scalars()]
    counts = {"contacts": len(ids), "without_messages": len(orphans)}
    if orphans:
        return Outcome(False, f"{len(orphans)} contact(s) without a message", counts,
                       [f"contact {c}: no message" for c in orphans[:FIRST]])
    return Outcome(True, f"all {len(ids)} contact(s) have messages", counts)
