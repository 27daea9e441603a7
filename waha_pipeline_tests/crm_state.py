"""Read the CRM back in the simulator's ground-truth shape, so a test compares plain sets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import sqlalchemy as sa


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def snapshot(url: str, channel_id: str | None = None) -> dict[str, Any]:
    """Every row that matters, keyed for comparison, plus the raw ids (for "nothing changed" checks). With
    `channel_id`: that channel's rows, and the contacts its messages belong to."""
    where = "" if channel_id is None else " where channel_id = :channel"
    bound = {} if channel_id is None else {"channel": channel_id}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            contacts = {r.id: r for r in conn.execute(sa.text("select id, phone, lid, group_id, name from contacts"))}
            messages = conn.execute(sa.text(
                "select id, contact_id, session_id, chat_id, external_id, from_me, sent_at, content_type, body "
                "from messages" + where), bound).all()
            sessions = conn.execute(sa.text(
                "select id, contact_id, started_at, ended_at, message_count, messages_from_contact, "
                "messages_from_agent, status from sessions" + where), bound).all()
            rejects = conn.execute(sa.text("select id, chat_id, external_id from message_rejects" + where),
                                   bound).all()
    finally:
        engine.dispose()
    if channel_id is not None:
        contacts = {cid: c for cid, c in contacts.items() if cid in {m.contact_id for m in messages}}

    def contact_key(contact_id: object) -> tuple:
        c = contacts[contact_id]
        return (c.phone, c.lid, c.group_id)

    return {
        "messages": {(m.external_id, m.chat_id, m.from_me, _ts(m.sent_at), m.content_type, m.body) for m in messages},
        "contacts": {(c.phone, c.lid, c.group_id, c.name) for c in contacts.values()},
        "sessions": {
            (contact_key(s.contact_id), _ts(s.started_at), _ts(s.ended_at), s.message_count,
             s.messages_from_contact, s.messages_from_agent, s.status)
            for s in sessions
        },
        "rejects": {(r.chat_id, r.external_id) for r in rejects},
        "ids": {
            "messages": {str(m.id) for m in messages},
            "contacts": {str(c) for c in contacts},
            "sessions": {str(s.id) for s in sessions},
            "rejects": {str(r.id) for r in rejects},
        },
        "message_sessions": {(m.external_id, str(m.session_id)) for m in messages},
        "session_bounds": {str(s.id): (str(s.contact_id), _ts(s.started_at), _ts(s.ended_at)) for s in sessions},
        "message_rows": [(str(m.contact_id), str(m.session_id), _ts(m.sent_at)) for m in messages],
    }


def truth(base_url: str, session: str, *, window_start: int | None, window_end: int, plan_time: int,
          timeout_minutes: int = 30, include_groups: bool = False) -> dict[str, Any]:
    """The simulator's own answer for a window, reshaped like `snapshot`."""
    params: dict[str, Any] = {
        "session": session, "window_end": window_end, "plan_time": plan_time,
        "timeout_minutes": timeout_minutes, "include_groups": str(include_groups).lower(),
    }
    if window_start is not None:
        params["window_start"] = window_start
    data = httpx.get(f"{base_url}/_sim/truth", params=params, timeout=60).json()
    return {
        "messages": {(m["external_id"], m["chat_id"], m["from_me"], m["sent_at"], m["content_type"], m["body"])
                     for m in data["messages"]},
        "contacts": {(c["phone"], c["lid"], c["group_id"], c["name"]) for c in data["contacts"]},
        "sessions": {
            ((s["contact"]["phone"], s["contact"]["lid"], s["contact"]["group_id"]), s["started_at"], s["ended_at"],
             s["message_count"], s["messages_from_contact"], s["messages_from_agent"], s["status"])
            for s in data["sessions"]
        },
        "rejects": {(r["chat_id"], r["external_id"]) for r in data["rejects"]},
    }


def latest_plan(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "select id, plan_time, window_start, window_end, session_timeout_minutes from import_plans "
                "order by plan_time desc, created_at desc limit 1")).one()
            chunks = conn.execute(sa.text(
                "select chunk_key, status, chat_ids, last_error, attempts from import_chunks where plan_id = :p order by chunk_key"),
                {"p": row.id}).all()
    finally:
        engine.dispose()
    return {
        "id": str(row.id), "plan_time": _ts(row.plan_time), "window_start": _ts(row.window_start),
        "window_end": _ts(row.window_end), "timeout": row.session_timeout_minutes,
        "chunks": [{"key": c.chunk_key, "status": c.status, "chat_ids": c.chat_ids, "last_error": c.last_error,
                    "attempts": c.attempts} for c in chunks],
    }


def assert_matches(state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Compare table by table, printing only the differences (the sets can hold thousands of rows)."""
    for table in ("messages", "contacts", "sessions", "rejects"):
        missing = expected[table] - state[table]
        extra = state[table] - expected[table]
        assert not missing and not extra, (
            f"{table}: {len(missing)} missing, {len(extra)} unexpected; "
            f"e.g. missing {sorted(missing, key=repr)[:3]}, unexpected {sorted(extra, key=repr)[:3]}"
        )
    # every message points at a session of its own contact that spans its time
    for contact_id, session_id, sent_at in state["message_rows"]:
        owner, started, ended = state["session_bounds"][session_id]
        assert owner == contact_id and started <= sent_at <= ended


def query(url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of one SQL query against the CRM at `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def committed_chunks(url: str) -> int:
    """Chunks the ledger shows committed (0 before the first import has created the schema)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select count(*) from import_chunks where status = 'committed'")).scalar_one()
    except sa.exc.ProgrammingError:
        return 0
    finally:
        engine.dispose()
