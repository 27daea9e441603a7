"""Is one CRM the same as another, or as the simulator's truth? Row content by natural keys, never by ids.

Ids differ legitimately between two importers (the floor derives its own); what must agree is every message with
its contact and its session, every contact with its name, every session's span and counts, every reject's
message. A session's status follows each import's own plan time, so it is compared as a count only.

Two imports with a lower window bound (`--days N`) planned a few minutes apart have windows that start a few
minutes apart: the comparison then starts at `since` = the later start + the session timeout, from which on every
session starts at the same message in both (no message of the contact in the timeout before it, in either window):
sessions starting at or after `since`, the messages of those sessions, the contacts that have one.
"""

from __future__ import annotations

import psycopg

# Per table: the natural form of a row (every column that carries meaning, with ids replaced by what they name).
_NATURAL = {
    "messages": ("SELECT md5(ROW(m.external_id, m.chat_id, m.from_me, m.sent_at, m.content_type, m.body, m.sender_id, "
                 "m.push_name, k.phone, k.lid, s.started_at)::text) AS h FROM messages m "
                 "JOIN contacts k ON k.id = m.contact_id LEFT JOIN sessions s ON s.id = m.session_id"),
    "contacts": "SELECT md5(ROW(phone, lid, group_id, name)::text) AS h FROM contacts",
    "sessions": ("SELECT md5(ROW(k.phone, k.lid, s.started_at, s.ended_at, s.message_count, s.messages_from_contact, "
                 "s.messages_from_agent)::text) AS h FROM sessions s JOIN contacts k ON k.id = s.contact_id"),
    "message_rejects": "SELECT md5(ROW(chat_id, external_id)::text) AS h FROM message_rejects",
}


_SINCE = {  # the rows compared from `since` on (a Unix second, bound as %(since)s)
    "messages": " WHERE s.started_at >= to_timestamp(%(since)s)",
    "contacts": (" WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.contact_id = contacts.id "
                 "AND s.started_at >= to_timestamp(%(since)s))"),
    "sessions": " WHERE s.started_at >= to_timestamp(%(since)s)",
    "message_rejects": "",
}


def natural_digests(url: str, since: int | None = None) -> dict:
    """Per CRM table: rows and an order-independent md5 of their natural forms (from `since` on, see above);
    open sessions counted."""
    out: dict = {"since": since}
    with psycopg.connect(url) as conn:
        for table, sql in _NATURAL.items():
            if since is not None:
                sql += _SINCE[table]
            rows, digest = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM ({sql}) AS t",
                {"since": since}).fetchone()
            out[table] = {"rows": rows, "md5": digest}
        out["open_sessions"] = conn.execute("SELECT count(*) FROM sessions WHERE status = 'open'").fetchone()[0]
    return out


def same_rows(a: dict, b: dict) -> dict:
    """{table: True/False} for the tables of natural_digests, plus the open-session counts of both."""
    out: dict = {t: a[t]["md5"] == b[t]["md5"] and a[t]["rows"] == b[t]["rows"] for t in _NATURAL}
    out["open_sessions"] = [a["open_sessions"], b["open_sessions"]]
    return out


def against_truth(url: str, truth: dict) -> dict:
    """Every truth row present in the CRM and nothing else, per table (messages, contacts, sessions: content;
    rejects: count)."""
    with psycopg.connect(url) as conn:
        messages = set(conn.execute(
            "SELECT external_id, chat_id, from_me, extract(epoch FROM sent_at)::bigint, content_type, body "
            "FROM messages").fetchall())
        contacts = set(conn.execute("SELECT phone, lid, name FROM contacts").fetchall())
        sessions = set(conn.execute(
            "SELECT k.phone, k.lid, extract(epoch FROM s.started_at)::bigint, extract(epoch FROM s.ended_at)::bigint, "
            "s.message_count, s.messages_from_contact, s.messages_from_agent, s.status "
            "FROM sessions s JOIN contacts k ON k.id = s.contact_id").fetchall())
        rejects = conn.execute("SELECT count(*) FROM message_rejects").fetchone()[0]
    want_messages = {(m["external_id"], m["chat_id"], m["from_me"], m["sent_at"], m["content_type"], m["body"])
                     for m in truth["messages"]}
    want_contacts = {(c["phone"], c["lid"], c["name"]) for c in truth["contacts"]}
    want_sessions = {(s["contact"]["phone"], s["contact"]["lid"], s["started_at"], s["ended_at"], s["message_count"],
                      s["messages_from_contact"], s["messages_from_agent"], s["status"]) for s in truth["sessions"]}
    return {
        "messages": messages == want_messages, "contacts": contacts == want_contacts,
        "sessions": sessions == want_sessions, "message_rejects": rejects == len(truth["rejects"]),
        "truth_rows": {"messages": len(want_messages), "contacts": len(want_contacts),
                       "sessions": len(want_sessions), "message_rejects": len(truth["rejects"])},
    }
