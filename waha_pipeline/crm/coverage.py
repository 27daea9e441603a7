"""Chat coverage rows (schema.chat_coverage): read before a fetch, extended inside the chunk's transaction."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from waha_pipeline.crm import sql
from waha_pipeline.crm.schema import chat_coverage, to_seconds, to_utc
from waha_pipeline.domain.batch import ChunkContext
from waha_pipeline.domain.coverage import Span, extend_coverage


@dataclass(frozen=True)
class Coverage:
    span: Span
    has_messages: bool


def read(conn: sa.Connection, channel_id: str, chat_ids: Collection[str]) -> dict[str, Coverage]:
    if not chat_ids:
        return {}
    rows = conn.execute(
        sa.select(chat_coverage.c.chat_id, chat_coverage.c.covered_from, chat_coverage.c.covered_to,
                  chat_coverage.c.has_messages)
        .where(chat_coverage.c.channel_id == channel_id, chat_coverage.c.chat_id.in_(sorted(chat_ids)))
    ).all()
    return {
        r.chat_id: Coverage((None if r.covered_from is None else to_seconds(r.covered_from), to_seconds(r.covered_to)),
                            bool(r.has_messages))
        for r in rows
    }


def extend(conn: sa.Connection, ctx: ChunkContext, chat_ids: Collection[str], with_messages: Collection[str]) -> None:
    """Record that the chunk's window of every chat is now in the CRM (one statement for the whole chunk)."""
    if not chat_ids:
        return
    window = (ctx.window_start, ctx.window_end)
    current = read(conn, ctx.channel_id, chat_ids)
    rows = []
    for chat_id in sorted(set(chat_ids)):
        old = current.get(chat_id)
        start, end = extend_coverage(window, old.span if old else None)
        rows.append({
            "channel_id": ctx.channel_id,
            "tenant_id": ctx.tenant_id,
            "chat_id": chat_id,
            "covered_from": None if start is None else to_utc(start),
            "covered_to": to_utc(end),
            "has_messages": bool(old and old.has_messages) or chat_id in with_messages,
        })
    stmt = sql.insert(chat_coverage, conn.dialect)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["channel_id", "chat_id"],
            set_={
                "covered_from": stmt.excluded.covered_from,
                "covered_to": stmt.excluded.covered_to,
                "has_messages": stmt.excluded.has_messages,
                "updated_at": sa.func.now(),
            },
        ),
        rows,
    )
