"""The import ledger: one row per plan, one per chunk with its status, counts, attempts and last error.

Functions take a Connection so the store can run them in its own transactions (the chunk's ledger row
commits in the chunk's transaction, SPEC 6.6). A committed chunk is never downgraded.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from waha_pipeline.crm import sql
from waha_pipeline.crm.records import ChunkRecord, PlanRecord
from waha_pipeline.crm.schema import import_chunks, import_plans, to_seconds, to_utc
from waha_pipeline.domain.plans import ChannelPlan, PlannedChat
from waha_pipeline.errors import ChunkError

LAST_ERROR_MAX = 500
_CHANNEL_LOCK_NAMESPACE = 0x57414841  # "WAHA": first key of the two-key advisory lock; the second is the channel
_IMPORT_LOCK_NAMESPACE = 0x57414849  # "WAHI": the session-level lock of the process importing a channel
_IDENTITY_LOCK_NAMESPACE = 0x57414843  # "WAHC": resolving (tenant, session, account) to one channel row
# What database drivers append to an error's primary message: psycopg the server's LINE (with the SQL text),
# DETAIL (with row values), HINT, CONTEXT, QUERY, STATEMENT parts; SQLAlchemy the statement and its parameters.
_SECONDARY_PARTS = re.compile(
    r"\s*(?:\bLINE \d+:|\bDETAIL:|\bHINT:|\bCONTEXT:|\bQUERY:|\bSTATEMENT:|\[SQL:|\[parameters:"
    r"|\(Background on this error at:).*",
    re.DOTALL,
)


def record_plan(conn: sa.Connection, tenant_id: str, channel_id: str, plan: ChannelPlan, plan_id: str) -> None:
    """Insert the plan and all its chunks as 'pending'; recording the same plan again changes nothing."""
    plan_row = {
        "id": plan_id,
        "tenant_id": tenant_id,
        "channel_id": channel_id,
        "channel_slug": plan.channel_slug,
        "plan_time": to_utc(plan.plan_time),
        "window_start": None if plan.window_start is None else to_utc(plan.window_start),
        "window_end": to_utc(plan.window_end),
        "days": plan.days,
        "session_timeout_minutes": plan.session_timeout_minutes,
        "chunk_size": plan.chunk_size,
        "include_groups": plan.include_groups,
        "all_chats": plan.all_chats,
        "chats_total": sum(len(c.chats) for c in plan.chunks),
        "skipped": dict(plan.skipped),
    }
    conn.execute(sql.insert(import_plans, conn.dialect).values(plan_row).on_conflict_do_nothing(index_elements=["id"]))
    chunk_rows = [
        {
            "plan_id": plan_id,
            "tenant_id": tenant_id,
            "chunk_key": chunk.key,
            "chunk_index": chunk.index,
            "chat_ids": chunk.chat_ids,
            "chats_detail": [dataclasses.asdict(chat) for chat in chunk.chats],
            "status": "pending",
            "chats": len(chunk.chats),
        }
        for chunk in plan.chunks
    ]
    if chunk_rows:
        stmt = sql.insert(import_chunks, conn.dialect).on_conflict_do_nothing(index_elements=["plan_id", "chunk_key"])
        conn.execute(stmt, chunk_rows)


def latest_plan(conn: sa.Connection, channel_id: str) -> PlanRecord | None:
    row = conn.execute(
        sa.select(import_plans)
        .where(import_plans.c.channel_id == channel_id)
        .order_by(import_plans.c.plan_time.desc(), import_plans.c.created_at.desc())
        .limit(1)
    ).first()
    return None if row is None else _plan_record(row._mapping)


def get_plan(conn: sa.Connection, plan_id: str) -> PlanRecord | None:
    row = conn.execute(sa.select(import_plans).where(import_plans.c.id == plan_id)).first()
    return None if row is None else _plan_record(row._mapping)


def plan_chunks(conn: sa.Connection, plan_id: str) -> list[ChunkRecord]:
    rows = conn.execute(
        sa.select(import_chunks).where(import_chunks.c.plan_id == plan_id).order_by(import_chunks.c.chunk_index)
    )
    return [_chunk_record(row._mapping) for row in rows]


def load_chunk(conn: sa.Connection, plan_id: str, chunk_key: str) -> tuple[ChunkRecord, list[PlannedChat]]:
    """The chunk's ledger row and its chats exactly as planned, so a re-run imports the same chats."""
    row = conn.execute(sa.select(import_chunks).where(*_chunk_pk(plan_id, chunk_key))).first()
    if row is None:
        raise ChunkError(f"chunk {chunk_key} is not in the ledger of plan {plan_id}")
    chats = [PlannedChat(**detail) for detail in row._mapping["chats_detail"]]
    return _chunk_record(row._mapping), chats


def plan_chats(conn: sa.Connection, plan_id: str) -> dict[str, PlannedChat]:
    """Every chat of the plan, by chat id, as planned."""
    rows = conn.execute(sa.select(import_chunks.c.chats_detail).where(import_chunks.c.plan_id == plan_id))
    return {detail["chat_id"]: PlannedChat(**detail) for (details,) in rows for detail in details}


def committed_chunk_keys(conn: sa.Connection, plan_id: str) -> set[str]:
    rows = conn.execute(
        sa.select(import_chunks.c.chunk_key).where(
            import_chunks.c.plan_id == plan_id, import_chunks.c.status == "committed"
        )
    )
    return set(rows.scalars())


def mark_chunk_started(conn: sa.Connection, plan_id: str, chunk_key: str) -> None:
    """Count an attempt; the status is left as it is (a committed chunk stays committed)."""
    conn.execute(
        sa.update(import_chunks)
        .where(*_chunk_pk(plan_id, chunk_key))
        .values(attempts=import_chunks.c.attempts + 1, updated_at=sa.func.now())
    )


def mark_chunk_failed(conn: sa.Connection, plan_id: str, chunk_key: str, error: str) -> None:
    """Record why an attempt failed (mark_chunk_started counted it). A committed chunk keeps its status and its
    (cleared) last error: its rows are in the CRM, and a later failed re-run does not undo them."""
    committed = import_chunks.c.status == "committed"
    conn.execute(
        sa.update(import_chunks)
        .where(*_chunk_pk(plan_id, chunk_key))
        .values(
            status=sa.case((committed, import_chunks.c.status), else_=sa.literal("failed")),
            last_error=sa.case((committed, import_chunks.c.last_error), else_=sa.literal(_truncate(error))),
            updated_at=sa.func.now(),
        )
    )


def mark_chunk_committed(conn: sa.Connection, plan_id: str, chunk_key: str, counts: dict[str, Any]) -> None:
    """Inside the chunk's transaction: status committed with its counts."""
    conn.execute(
        sa.update(import_chunks)
        .where(*_chunk_pk(plan_id, chunk_key))
        .values(status="committed", last_error=None, committed_at=sa.func.now(), updated_at=sa.func.now(), **counts)
    )


def lock_channel(conn: sa.Connection, channel_id: str) -> None:
    """Hold the channel's commit lock until the transaction ends: chunks of one channel may be worked on by several
    processes, but their commits (which re-split sessions and set channel-wide statuses) happen one at a time, so
    they cannot deadlock on each other's rows and each sees the previous one complete (PostgreSQL; SQLite
    serializes writers by itself)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, hashtext(:channel))"),
                     {"ns": _CHANNEL_LOCK_NAMESPACE, "channel": channel_id})


def lock_channel_identity(conn: sa.Connection, tenant_id: str, waha_session: str) -> None:
    """Until the transaction ends, be the only one resolving a channel of (tenant, session): two imports of two
    WAHA servers' `default` sessions starting together must not both take over the same account-less channel
    (PostgreSQL; SQLite serializes writers by itself)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, hashtext(:key))"),
                     {"ns": _IDENTITY_LOCK_NAMESPACE, "key": f"{tenant_id}\x1f{waha_session}"})


def fail_pending_chunks(conn: sa.Connection, plan_id: str, chunk_keys: Collection[str], reason: str) -> list[str]:
    """Mark the chunks among `chunk_keys` that are still pending failed with `reason` (a committed or failed chunk
    keeps its status and reason); returns the keys it marked."""
    pending = sorted(
        conn.execute(
            sa.select(import_chunks.c.chunk_key).where(
                import_chunks.c.plan_id == plan_id,
                import_chunks.c.status == "pending",
                import_chunks.c.chunk_key.in_(sorted(set(chunk_keys))),
            )
        ).scalars()
    )
    if pending:
        conn.execute(
            sa.update(import_chunks)
            .where(import_chunks.c.plan_id == plan_id, import_chunks.c.status == "pending",
                   import_chunks.c.chunk_key.in_(pending))
            .values(status="failed", last_error=_truncate(reason), updated_at=sa.func.now())
        )
    return pending


def try_import_lock(conn: sa.Connection, channel_slug: str) -> bool:
    """Take the channel's import lock for the life of this connection (PostgreSQL session advisory lock): held by
    the process running the channel's chunks, released by PostgreSQL when that process or its connection dies."""
    return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:slug))"),
                             {"ns": _IMPORT_LOCK_NAMESPACE, "slug": channel_slug}).scalar_one())


def release_import_lock(conn: sa.Connection, channel_slug: str) -> None:
    conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:slug))"),
                 {"ns": _IMPORT_LOCK_NAMESPACE, "slug": channel_slug})


def import_lock_holder(conn: sa.Connection, channel_slug: str) -> str | None:
    """Who holds the channel's import lock (the holder's application_name and since when), or None when free."""
    row = conn.execute(
        sa.text(
            "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = CAST(:ns AS oid) "
            # advisory locks belong to a database; pg_locks lists those of every database of the server
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objid = CAST(hashtext(:slug)::bigint & 4294967295 AS oid) LIMIT 1"
        ),
        {"ns": _IMPORT_LOCK_NAMESPACE, "slug": channel_slug},
    ).first()
    if row is None:
        return None
    since = f" since {row.backend_start:%Y-%m-%d %H:%M:%S %Z}".rstrip() if row.backend_start else ""
    return f"{row.application_name or 'another process'}{since}"


def primary_message(error: str) -> str:
    """The primary part of a (database) error message, without SQL text, row values or parameters."""
    return _SECONDARY_PARTS.sub("", error).strip()


def lock_chunk(conn: sa.Connection, plan_id: str, chunk_key: str) -> str:
    """Lock the chunk's ledger row for this transaction (PostgreSQL; SQLite holds the database write lock)."""
    status = conn.execute(
        sa.select(import_chunks.c.status).where(*_chunk_pk(plan_id, chunk_key)).with_for_update()
    ).scalar_one_or_none()
    if status is None:
        raise ChunkError(f"chunk {chunk_key} of plan {plan_id} is not in the ledger; record the plan first")
    return status


def _chunk_pk(plan_id: str, chunk_key: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (import_chunks.c.plan_id == plan_id, import_chunks.c.chunk_key == chunk_key)


def _truncate(error: str) -> str:
    error = " ".join(primary_message(error).split())  # one line, no SQL
    return error if len(error) <= LAST_ERROR_MAX else error[: LAST_ERROR_MAX - 1] + "…"


def _plan_record(m: Any) -> PlanRecord:
    return PlanRecord(
        id=str(m["id"]),
        tenant_id=m["tenant_id"],
        channel_id=str(m["channel_id"]),
        channel_slug=m["channel_slug"],
        plan_time=to_seconds(m["plan_time"]),
        window_start=None if m["window_start"] is None else to_seconds(m["window_start"]),
        window_end=to_seconds(m["window_end"]),
        days=m["days"],
        session_timeout_minutes=m["session_timeout_minutes"],
        chunk_size=m["chunk_size"],
        include_groups=bool(m["include_groups"]),
        all_chats=bool(m["all_chats"]),
        chats_total=m["chats_total"],
        skipped=dict(m["skipped"] or {}),
        created_at=m["created_at"],
    )


def _chunk_record(m: Any) -> ChunkRecord:
    return ChunkRecord(
        plan_id=str(m["plan_id"]),
        chunk_key=m["chunk_key"],
        chunk_index=m["chunk_index"],
        chat_ids=tuple(m["chat_ids"]),
        status=m["status"],
        chats=m["chats"],
        messages=m["messages"],
        rejects=m["rejects"],
        sessions=m["sessions"],
        contacts=m["contacts"],
        attempts=m["attempts"],
        last_error=m["last_error"],
        committed_at=m["committed_at"],
        updated_at=m["updated_at"],
        skipped=m["skipped"],
    )
