"""Names of contacts whose chats two chunks of one plan hold: a lid's phone that only messages reveal (SPEC 6.5)
joins a lid chat of one chunk to the phone's chat of another, which the plan could not keep together.

Each chunk resolved its contact before the other committed, so the name is settled again inside the commit, under
the channel's commit lock, from what the CRM holds then: the last of the two chunks to commit sees both chats and
every stored message, as one clean import would (SPEC 6.3, 6.7).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from waha_pipeline.crm.schema import contacts, messages
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import ChunkBatch
from waha_pipeline.domain.identity import chat_name, peers_outside, with_learned_phones
from waha_pipeline.domain.plans import PlannedChat


def joined_pairs(conn: sa.Connection, tenant_id: str, chats: Sequence[PlannedChat]) -> dict[str, str]:
    """lid -> phone pairs of the chunk's chats that the plan did not know and the CRM knows now."""
    lids = {c.lid for c in chats if c.kind == "lid" and c.phone is None and c.lid}
    phones = {c.phone for c in chats if c.kind == "direct" and c.lid is None and c.phone}
    if not lids and not phones:
        return {}
    c = contacts.c
    rows = conn.execute(
        sa.select(c.lid, c.phone).where(
            c.tenant_id == tenant_id, c.lid.is_not(None), c.phone.is_not(None),
            sa.or_(c.lid.in_(sorted(lids)), c.phone.in_(sorted(phones))),
        )
    )
    return {str(lid): str(phone) for lid, phone in rows}


def settle(conn: sa.Connection, batch: ChunkBatch, joined: dict[str, str]) -> None:
    """Name the contacts that `joined` links to chats outside the chunk from all of their chats, else from the
    push name of their latest inbound message stored in the channel; never set a name to NULL."""
    if not joined or batch.plan_chats is None:
        return
    ctx = batch.context
    chats = with_learned_phones(batch.planned_chats, joined)
    peers = peers_outside(chats, batch.plan_chats(conn), joined)
    if not peers:
        return
    by_contact: dict[str, list[PlannedChat]] = {}
    for chat in (*chats, *peers):
        if chat.phone in joined.values():
            by_contact.setdefault(ids.contact_id(ctx.tenant_id, phone=chat.phone, lid=None, group_id=None), []).append(chat)
    m = messages.c
    for contact_id, group in sorted(by_contact.items()):
        name = chat_name(group) or conn.execute(
            sa.select(m.push_name)
            .where(m.channel_id == ctx.channel_id, m.contact_id == contact_id, m.from_me.is_(False),
                   m.push_name.is_not(None), m.push_name != "")
            .order_by(m.sent_at.desc(), m.external_id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if name is not None:
            conn.execute(sa.update(contacts).where(contacts.c.id == contact_id, contacts.c.name.is_distinct_from(name))
                         .values(name=name, updated_at=sa.func.now()))
