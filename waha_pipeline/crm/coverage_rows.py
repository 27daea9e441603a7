"""Chat coverage rows (schema.chat_coverage): read before a plan and a fetch, extended inside the chunk's
transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import sqlalchemy as sa

from waha_pipeline.crm import sql
from waha_pipeline.crm.schema import chat_coverage, to_seconds, to_utc
from waha_pipeline.domain.batch import ChunkContext
from waha_pipeline.domain.coverage import Coverage, Read, Span, extend_coverage, proven_coverage


def read(conn: sa.Connection, channel_id: str, chat_ids: Collection[str] | None = None) -> dict[str, Coverage]:
    """Coverage of the given chats, or of every chat of the channel when `chat_ids` is None."""
    if chat_ids is not None and not chat_ids:
        return {}
    c = chat_coverage.c
    query = sa.select(c.chat_id, c.covered_from, c.covered_to, c.has_messages, c.fingerprint).where(
        c.channel_id == channel_id
    )
    if chat_ids is not None:
        query = query.where(c.chat_id.in_(sorted(chat_ids)))
    return {
        r.chat_id: Coverage((None if r.covered_from is None else to_seconds(r.covered_from), to_seconds(r.covered_to)),
                            bool(r.has_messages), r.fingerprint)
        for r in conn.execute(query)
    }


def extend(
    conn: sa.Connection,
    ctx: ChunkContext,
    fingerprints: Mapping[str, str],
    with_messages: Collection[str],
    reads: Mapping[str, Sequence[Read]] | None = None,
    frozen: Collection[str] = (),
) -> None:
    """Record how much of the chunk's window of every chat (the keys of `fingerprints`) is now in the CRM,
    computed from what the fingerprints say (one statement for the whole chunk).

    `reads`: per chat, the ranges fetched and how far each was proven read to its end (domain.coverage.Read); a
    chat's coverage grows only by the proven parts (a chat absent from it: nothing proven). None: the whole
    window counts as read (a caller that does not track reads). `frozen`: chats whose coverage must not advance
    at all (their span stays; a chat without coverage gets none).
    """
    if not fingerprints:
        return
    window = (ctx.window_start, ctx.window_end)
    current = read(conn, ctx.channel_id, fingerprints)
    rows = []
    for chat_id in sorted(fingerprints):
        old = current.get(chat_id)
        has_messages = bool(old and old.has_messages) or chat_id in with_messages
        fingerprint: str | None = fingerprints[chat_id]
        span: Span | None
        if chat_id in frozen:
            span, fingerprint = (old.span, old.fingerprint) if old else (None, None)
        elif reads is None:
            span = extend_coverage(window, old.span if old else None)
        else:
            span = proven_coverage(old.span if old else None, reads.get(chat_id, ()))
        if span is None:  # nothing covered: no row, the next import reads the whole window
            continue
        start, end = span
        rows.append({
            "channel_id": ctx.channel_id,
            "tenant_id": ctx.tenant_id,
            "chat_id": chat_id,
            "covered_from": None if start is None else to_utc(start),
            "covered_to": to_utc(end),
            "has_messages": has_messages,
            "fingerprint": fingerprint,
        })
    if not rows:
        return
    stmt = sql.insert(chat_coverage, conn.dialect)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["channel_id", "chat_id"],
            set_={
                "covered_from": stmt.excluded.covered_from,
                "covered_to": stmt.excluded.covered_to,
                "has_messages": stmt.excluded.has_messages,
                "fingerprint": stmt.excluded.fingerprint,
                "updated_at": sa.func.now(),
            },
        ),
        rows,
    )
