"""The steps of one chunk's transaction (SPEC 6.3-6.6), each a set-based statement against staged frames.

Order matters for the foreign keys and the unique lid: contacts (lid-only merges) -> messages -> rejects
-> sessions of the affected contacts -> coverage -> ledger row.

Statuses: recording a plan sets every session of the channel to the plan's `plan_time` and timeout
(`update_statuses`), and a commit uses the latest plan's settings (`_effective_settings`), so the sessions a commit
writes carry the statuses the rest of the channel already has; the channel's other sessions need no update here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import pandas as pd
import sqlalchemy as sa

from waha_pipeline.crm import coverage_rows, ledger, names, sql, temp_tables
from waha_pipeline.crm.records import CommitResult
from waha_pipeline.crm.schema import UUID_T, channels, contacts, import_plans, message_rejects, messages
from waha_pipeline.crm.schema import sessions, to_seconds, to_utc
from waha_pipeline.crm.temp_tables import temp_assign, temp_contacts, temp_merges, temp_messages, temp_rejects
from waha_pipeline.crm.temp_tables import temp_sessions
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import CONTACT_COLUMNS, MESSAGE_COLUMNS, REJECT_COLUMNS, ChunkBatch, ChunkContext
from waha_pipeline.domain.batch import conform, empty_frame
from waha_pipeline.domain.identity import with_learned_phones
from waha_pipeline.domain.planning import chat_fingerprint
from waha_pipeline.domain.sessions import assign_sessions
from waha_pipeline.errors import PipelineError
from waha_pipeline.settings import DEFAULT_CRM_LOCK_TIMEOUT_S, DEFAULT_CRM_STATEMENT_TIMEOUT_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Settings:
    plan_time: int
    timeout_minutes: int


class CrmBusy(PipelineError):
    """A chunk's commit gave up on a lock (CRM_LOCK_TIMEOUT_SECONDS) or a statement (CRM_STATEMENT_TIMEOUT_SECONDS).

    Transient: neither a ChunkError nor a DBAPIError, so the chunk runner reports it as retryable and the step's
    RetryPolicy tries the chunk again (the lock is usually released by then; nothing of the chunk was written).
    """


DEFAULT_TIMEOUTS = (DEFAULT_CRM_LOCK_TIMEOUT_S, DEFAULT_CRM_STATEMENT_TIMEOUT_S)  # (lock, statement) seconds
LOCK_LOG_INTERVAL_S = 15.0  # how often a commit that waits for a lock says so in the log

_LOCK_NOT_AVAILABLE = "55P03"
_QUERY_CANCELED = "57014"


def commit_chunk(
    conn: sa.Connection, batch: ChunkBatch, timeouts: tuple[float, float] = DEFAULT_TIMEOUTS
) -> CommitResult:
    """Commit the chunk inside the caller's transaction. On PostgreSQL, waiting for one lock and running one
    statement are bounded by `timeouts` (lock, statement) seconds (CRM_LOCK_TIMEOUT_SECONDS and
    CRM_STATEMENT_TIMEOUT_SECONDS); past either, CrmBusy names the chunk and the bound, and a wait for a lock is
    logged every LOCK_LOG_INTERVAL_S meanwhile."""
    if conn.dialect.name != "postgresql":  # SQLite: one writer at a time, its busy timeout bounds the wait
        return _commit(conn, batch)
    lock_s, statement_s = timeouts
    key = batch.context.chunk_key
    try:
        conn.execute(sa.text("SELECT set_config('lock_timeout', :lock, true), "
                             "set_config('statement_timeout', :statement, true)"),
                     {"lock": _milliseconds(lock_s), "statement": _milliseconds(statement_s)})  # SET LOCAL
        with _lock_watch(conn, key):
            return _commit(conn, batch)
    except sa.exc.OperationalError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code == _LOCK_NOT_AVAILABLE:
            raise CrmBusy(f"chunk {key}: waited {lock_s:g} s for a lock on the CRM tables held by another "
                          "transaction (CRM_LOCK_TIMEOUT_SECONDS); nothing was written") from exc
        if code == _QUERY_CANCELED and "statement timeout" in str(exc.orig):
            raise CrmBusy(f"chunk {key}: a statement of the commit ran longer than {statement_s:g} s "
                          "(CRM_STATEMENT_TIMEOUT_SECONDS); nothing was written") from exc
        raise


def _milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


@contextmanager
def _lock_watch(conn: sa.Connection, chunk_key: str) -> Iterator[None]:
    """While the block runs, look every LOCK_LOG_INTERVAL_S (from another connection) whether this connection's
    backend waits for a lock, and log it when it does: a commit stuck behind another transaction is visible
    before its lock timeout ends it."""
    pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    engine = conn.engine
    done = threading.Event()

    def watch() -> None:
        while not done.wait(LOCK_LOG_INTERVAL_S):
            try:
                with engine.connect() as other:
                    row = other.execute(_WAITING, {"pid": pid}).first()
            except sa.exc.SQLAlchemyError as exc:  # the watch only informs; the commit decides
                log.debug("chunk %s: cannot see whether it waits for a lock: %s", chunk_key, exc)
                continue
            if row is not None and not done.is_set():
                log.warning("chunk %s waiting for a lock on the CRM tables for %d s (%s)",
                            chunk_key, row.waited, row.wait_event)

    watcher = threading.Thread(target=watch, name=f"lock-watch-{chunk_key}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


_WAITING = sa.text(
    "SELECT wait_event, CAST(extract(epoch FROM clock_timestamp() - query_start) AS integer) AS waited "
    "FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'"
)


def _commit(conn: sa.Connection, batch: ChunkBatch) -> CommitResult:
    ctx = batch.context
    ledger.lock_channel(conn, ctx.channel_id)
    ledger.lock_chunk(conn, ctx.plan_id, ctx.chunk_key)
    settings = _effective_settings(conn, ctx.channel_id, ctx.plan_time, ctx.session_timeout_minutes)
    contact_frame, message_frame = _prepare(conn, ctx.tenant_id, batch)
    message_frame, nul_rejects = _without_nul(ctx, message_frame)
    if len(nul_rejects):  # their contact exists only when another of its messages is stored
        kept = set(message_frame["contact_id"].dropna())
        gone = set(batch.messages["contact_id"].dropna()) - kept
        contact_frame = contact_frame[~contact_frame["id"].isin(list(gone))]
    contact_frame = contact_frame.assign(name=temp_tables.without_nul(contact_frame["name"]))
    reject_frame = pd.concat([batch.rejects, nul_rejects], ignore_index=True) if len(nul_rejects) else batch.rejects
    reject_frame = reject_frame.drop_duplicates("id") if len(reject_frame) else reject_frame

    temp_tables.create(conn)
    temp_tables.load(conn, temp_contacts, contact_frame)
    merged, other_channels = _upsert_contacts(conn, ctx.tenant_id)
    # The chunk's contacts, plus stored phone contacts that lid-only chats resolved to.
    affected = sorted(set(contact_frame["id"].dropna()) | set(message_frame["contact_id"].dropna()))
    affected_ids = sa.bindparam("affected", affected, type_=UUID_T, expanding=True)
    if message_frame.empty and not merged and _sessions_follow(conn, ctx.channel_id, settings):
        # Nothing new for these contacts and their sessions were split with this timeout: they stand as they
        # are, statuses included. A re-import of an unchanged chunk skips reading its whole history.
        inserted = 0
        n_sessions = _count_sessions(conn, ctx.channel_id, affected_ids)
    else:
        inserted, n_sessions = _resessionize(conn, ctx, message_frame, affected_ids, settings)
    temp_tables.load(conn, temp_rejects, reject_frame)
    _insert_rejects(conn, ctx.tenant_id, ctx.channel_id)
    for channel_id in other_channels:  # a merged lid-only contact also had messages in other channels
        other = _effective_settings(conn, channel_id, settings.plan_time, None)
        _recompute_sessions(conn, ctx.tenant_id, channel_id, sa.select(temp_merges.c.new_id), other)
    # lid phones learned from messages after planning: the chats' identity as the next plan will see it
    joined = names.joined_pairs(conn, ctx.tenant_id, batch.planned_chats)
    names.settle(conn, batch, joined)
    fingerprints = {c.chat_id: chat_fingerprint(c, settings.timeout_minutes)
                    for c in with_learned_phones(batch.planned_chats, joined)}
    coverage_rows.extend(conn, ctx, fingerprints, set(message_frame["chat_id"].dropna()),
                    reads=batch.reads, frozen=batch.frozen_chats)

    counts = {
        "chats": batch.chats,
        "messages": len(message_frame),
        "rejects": len(reject_frame),
        "sessions": n_sessions,
        "contacts": len(contact_frame),
        "skipped": None if batch.skipped is None else dict(batch.skipped),
    }
    ledger.mark_chunk_committed(conn, ctx.plan_id, ctx.chunk_key, counts)
    temp_tables.drop(conn)
    return CommitResult(
        messages_inserted=inserted,
        messages_total=len(message_frame),
        sessions=n_sessions,
        contacts=len(contact_frame),
        rejects=len(reject_frame),
        contacts_merged=merged,
    )


# A NUL in these columns rejects the message (SPEC 6.8): they identify it or are its content, and a message without
# its NULs would be another message. The push name is a name: its NULs are dropped instead.
_NUL_REJECTS = ("external_id", "chat_id", "sender_id", "body")


def _without_nul(ctx: ChunkContext, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The messages PostgreSQL can store, and the others as rejects whose reason names the column, the chat and
    the message: one bad row must not fail the chunk's COPY (and so the whole chunk, every time)."""
    if frame.empty:
        return frame, empty_frame(REJECT_COLUMNS)
    if "push_name" in frame.columns:
        frame = frame.assign(push_name=temp_tables.without_nul(frame["push_name"]))
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    for column in reversed(_NUL_REJECTS):  # the first column of the list wins
        if column in frame.columns:
            reason[temp_tables.with_nul(frame[column])] = f"{column} contains a NUL character"
    bad = reason.notna()
    if not bad.any():
        return frame, empty_frame(REJECT_COLUMNS)
    rows = frame[bad]
    chat, message = _escaped(rows["chat_id"]), _escaped(rows["external_id"])
    rejects = pd.DataFrame({
        "id": [ids.reject_id(ctx.channel_id, c, e) for c, e in zip(rows["chat_id"], rows["external_id"], strict=True)],
        "chat_id": chat,
        "external_id": message,
        "reason": reason[bad] + " (chat " + chat + ", message " + message + ")",
        "payload": [orjson.dumps({k: (None if pd.isna(v) else v) for k, v in row.items() if k not in _OWN_IDS},
                                 default=str).decode()
                    for row in rows.to_dict("records")],
    })
    log.warning("chunk %s: %d messages rejected for a NUL character", ctx.chunk_key, len(rejects))
    return frame[~bad], conform(rejects, REJECT_COLUMNS)


_OWN_IDS = ("id", "contact_id", "session_id")  # computed here, not received from WAHA


def _escaped(values: pd.Series) -> pd.Series:
    """NUL spelled as JSON does, so a reject can name the value it could not store."""
    return values.astype("string").str.replace(temp_tables.NUL, "\\u0000", regex=False)


def _resessionize(
    conn: sa.Connection, ctx: ChunkContext, message_frame: pd.DataFrame, affected_ids: ContactIds, settings: _Settings
) -> tuple[int, int]:
    """Insert the new messages with their sessions over stored + new messages of the affected contacts.

    Sessions are computed BEFORE the insert so new rows are written with their session id once.
    Returns (messages inserted, sessions of the affected contacts).
    """
    stored = _stored_messages(conn, ctx.channel_id, affected_ids)
    new = message_frame[~message_frame["external_id"].isin(stored["external_id"])]
    combined = pd.concat([stored[list(_SESSION_INPUT)], new[list(_SESSION_INPUT)]], ignore_index=True)
    per_row, new_sessions = _assign(combined, ctx.channel_id, settings)
    _upsert_sessions(conn, ctx.tenant_id, ctx.channel_id, new_sessions)
    temp_tables.load(conn, temp_messages, new.assign(session_id=per_row.iloc[len(stored):].to_numpy()))
    inserted = _insert_messages(conn, ctx.tenant_id, ctx.channel_id)
    if inserted == len(new):
        _reassign_stored(conn, stored, per_row.iloc[: len(stored)])
        _delete_stale_sessions(conn, ctx.channel_id, affected_ids)
        return inserted, len(new_sessions)
    # some "new" ids were already stored under a contact outside the chunk: recompute from the rows
    log.warning("chunk %s: %d messages stored under other contacts", ctx.chunk_key, len(new) - inserted)
    return inserted, _recompute_sessions(conn, ctx.tenant_id, ctx.channel_id, affected_ids, settings)


def _sessions_follow(conn: sa.Connection, channel_id: str, settings: _Settings) -> bool:
    """Every plan of the channel split sessions with this timeout, so stored sessions already follow it."""
    other = conn.execute(
        sa.select(import_plans.c.id)
        .where(import_plans.c.channel_id == channel_id,
               import_plans.c.session_timeout_minutes != settings.timeout_minutes)
        .limit(1)
    ).first()  # fmt: skip
    return other is None


def _count_sessions(conn: sa.Connection, channel_id: str, contact_ids: ContactIds) -> int:
    return conn.execute(
        sa.select(sa.func.count())
        .select_from(sessions)
        .where(sessions.c.channel_id == channel_id, sessions.c.contact_id.in_(contact_ids))
    ).scalar_one()


def _effective_settings(conn: sa.Connection, channel_id: str, plan_time: int, timeout: int | None) -> _Settings:
    """The chunk's plan settings, unless the ledger holds a later plan of the channel (its settings win, 6.4)."""
    row = conn.execute(
        sa.select(import_plans.c.plan_time, import_plans.c.session_timeout_minutes)
        .where(import_plans.c.channel_id == channel_id)
        .order_by(import_plans.c.plan_time.desc(), import_plans.c.created_at.desc())
        .limit(1)
    ).first()
    if row is not None and (timeout is None or to_seconds(row.plan_time) > plan_time):
        return _Settings(to_seconds(row.plan_time), row.session_timeout_minutes)
    if timeout is None:
        timeout = conn.execute(
            sa.select(channels.c.session_timeout_minutes).where(channels.c.id == channel_id)
        ).scalar_one_or_none() or 30
    return _Settings(plan_time, timeout)


def _prepare(conn: sa.Connection, tenant_id: str, batch: ChunkBatch) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dedupe the frames and point lid-only contacts whose lid a phone contact carries at that contact."""
    frame = batch.contacts.loc[:, list(CONTACT_COLUMNS)].astype(CONTACT_COLUMNS)
    if not frame["id"].is_unique:
        frame = frame.groupby("id", sort=False, dropna=False).last().reset_index()  # last non-null per column
    msgs = batch.messages.drop_duplicates("external_id", keep="first") if len(batch.messages) else batch.messages
    msgs = msgs.astype({k: v for k, v in MESSAGE_COLUMNS.items() if k in msgs.columns})

    lid_only = frame["phone"].isna() & frame["lid"].notna()
    if lid_only.any():
        holders = frame.loc[frame["phone"].notna() & frame["lid"].notna(), ["lid", "id"]]
        stored = conn.execute(
            sa.select(contacts.c.lid, contacts.c.id).where(
                contacts.c.tenant_id == tenant_id,
                contacts.c.phone.is_not(None),
                contacts.c.lid.in_(frame.loc[lid_only, "lid"].tolist()),
            )
        ).all()
        by_lid = {str(lid): str(cid) for lid, cid in stored}
        by_lid.update(dict(zip(holders["lid"], holders["id"], strict=True)))
        redirect = {
            old: by_lid[lid] for old, lid in zip(frame.loc[lid_only, "id"], frame.loc[lid_only, "lid"], strict=True)
            if lid in by_lid and by_lid[lid] != old
        }
        if redirect:
            log.info("chunk %s: %d lid-only contacts resolved to phone contacts", batch.context.chunk_key, len(redirect))
            frame = frame[~frame["id"].isin(list(redirect))]
            msgs = msgs.assign(contact_id=msgs["contact_id"].replace(redirect))
    # Two phone contacts of one chunk cannot share a lid (unique per tenant): the last one keeps it.
    duplicate_lid = frame["lid"].notna() & frame.duplicated("lid", keep="last")
    frame.loc[duplicate_lid, "lid"] = pd.NA
    return frame, msgs


def _upsert_contacts(conn: sa.Connection, tenant_id: str) -> tuple[int, list[str]]:
    """Upsert the chunk's contacts; merge lid-only contacts into the phone contact that now carries their lid.

    Returns the number of merged contacts and the other channels their messages lived in.
    """
    s, c = temp_contacts.c, contacts.c
    # A lid now mapped to another phone moves to that phone (WAHA's latest mapping wins, as a clean import would).
    taken_elsewhere = sa.exists().where(
        s.lid == c.lid, s.phone.is_not(None), s.id != c.id
    )
    conn.execute(
        sa.update(contacts)
        .where(c.tenant_id == tenant_id, c.phone.is_not(None), taken_elsewhere)
        .values(lid=None, updated_at=sa.func.now())
    )
    # Lid-only contacts whose lid an incoming phone contact carries: merge them into it (SPEC 6.3).
    conn.execute(
        sa.insert(temp_merges).from_select(
            ["old_id", "new_id"],
            sa.select(c.id, s.id)
            .join(temp_contacts, sa.and_(s.lid == c.lid, s.id != c.id))
            .where(c.tenant_id == tenant_id, c.phone.is_(None), s.phone.is_not(None)),
        )
    )
    m = temp_merges.c
    pending_merge = s.id.in_(sa.select(m.new_id))

    stmt = sql.insert(contacts, conn.dialect)
    select = sa.select(
        s.id,
        sa.literal(tenant_id, sa.Text),
        s.phone,
        sa.case((pending_merge, sa.null()), else_=s.lid),  # set after the merge frees the lid
        s.group_id,
        s.name,
    ).where(sa.true())  # SQLite: INSERT ... SELECT needs a WHERE before ON CONFLICT
    stmt = stmt.from_select(["id", "tenant_id", "phone", "lid", "group_id", "name"], select)
    new_lid = sa.func.coalesce(stmt.excluded.lid, c.lid)
    new_name = sa.func.coalesce(stmt.excluded.name, c.name)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={"lid": new_lid, "name": new_name, "updated_at": sa.func.now()},
            where=sa.or_(new_lid.is_distinct_from(c.lid), new_name.is_distinct_from(c.name)),
        )
    )

    merged = conn.execute(sa.select(sa.func.count()).select_from(temp_merges)).scalar_one()
    if not merged:
        return 0, []
    old_ids = sa.select(m.old_id)
    other_channels = [
        str(ch)
        for ch in conn.execute(sa.select(messages.c.channel_id).where(messages.c.contact_id.in_(old_ids)).distinct())
        .scalars()
    ]
    old = contacts.alias("old")
    conn.execute(
        sa.update(contacts)
        .where(c.id.in_(sa.select(m.new_id)), c.name.is_(None))
        .values(
            name=sa.select(old.c.name)
            .join(temp_merges, m.old_id == old.c.id)
            .where(m.new_id == c.id)
            .scalar_subquery()
        )
    )
    conn.execute(
        sa.update(messages)
        .where(messages.c.contact_id == m.old_id)
        .values(contact_id=m.new_id, session_id=None)
    )
    conn.execute(sa.delete(sessions).where(sessions.c.contact_id.in_(old_ids)))
    conn.execute(sa.delete(contacts).where(c.id.in_(old_ids)))
    conn.execute(
        sa.update(contacts)
        .where(c.id == s.id, c.id.in_(sa.select(m.new_id)), s.lid.is_not(None))
        .values(lid=s.lid, updated_at=sa.func.now())
    )
    log.info("merged %d lid-only contacts into phone contacts", merged)
    return int(merged), other_channels


def _insert_messages(conn: sa.Connection, tenant_id: str, channel_id: str) -> int:
    sm = temp_messages.c
    columns = ["id", "tenant_id", "channel_id", "contact_id", "session_id", "chat_id", "external_id", "from_me",
               "sent_at", "content_type", "body", "sender_id", "push_name"]  # fmt: skip
    select = sa.select(
        sm.id,
        sa.literal(tenant_id, sa.Text),
        sa.literal(channel_id, UUID_T),
        sm.contact_id,
        sm.session_id,
        sm.chat_id,
        sm.external_id,
        sm.from_me,
        sql.from_epoch(sm.sent_at),
        sm.content_type,
        sm.body,
        sm.sender_id,
        sm.push_name,
    ).where(sa.true())
    stmt = sql.insert(messages, conn.dialect).from_select(columns, select)
    options = {"preserve_rowcount": True}  # SQLAlchemy reports INSERT rowcounts only on request
    try:
        # The staged rows were checked against the contacts' stored messages, so they are new unless one is stored
        # under a contact outside the chunk. A plain INSERT skips ON CONFLICT's speculative insertion: ~20% of the
        # statement's time, and this statement is most of a chunk's commit (measured on the bench `scale` CRM).
        with conn.begin_nested():
            result = conn.execute(stmt, execution_options=options)
    except sa.exc.IntegrityError:  # the savepoint undid the attempt; keep what is not stored yet
        result = conn.execute(stmt.on_conflict_do_nothing(index_elements=["channel_id", "external_id"]),
                              execution_options=options)
    return max(int(result.rowcount), 0)


def _insert_rejects(conn: sa.Connection, tenant_id: str, channel_id: str) -> None:
    sr = temp_rejects.c
    select = sa.select(
        sr.id, sa.literal(tenant_id, sa.Text), sa.literal(channel_id, UUID_T), sr.chat_id, sr.external_id,
        sr.reason, sr.payload,
    ).where(sa.true())  # fmt: skip
    stmt = sql.insert(message_rejects, conn.dialect).from_select(
        ["id", "tenant_id", "channel_id", "chat_id", "external_id", "reason", "payload"], select
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


_SESSION_INPUT = {"contact_id": "string", "external_id": "string", "sent_at": "int64", "from_me": "bool"}
_STORED = {"id": "string", **_SESSION_INPUT, "session_id": "string"}
ContactIds = sa.Select[tuple[str]] | sa.CompoundSelect[tuple[str]] | sa.BindParameter[list[str]]


def _stored_messages(conn: sa.Connection, channel_id: str, contact_ids: ContactIds) -> pd.DataFrame:
    m = messages.c
    text = sa.Text()  # uuids as text straight from the driver: no uuid.UUID object per value
    rows = conn.execute(
        sa.select(sa.cast(m.id, text), sa.cast(m.contact_id, text), m.external_id, sql.epoch_seconds(m.sent_at),
                  m.from_me, sa.cast(m.session_id, text))  # fmt: skip
        .where(m.channel_id == channel_id, m.contact_id.in_(contact_ids))
    ).all()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_STORED)
    return pd.DataFrame(dict(zip(_STORED, columns, strict=True))).astype(_STORED)


def _assign(frame: pd.DataFrame, channel_id: str, settings: _Settings) -> tuple[pd.Series, pd.DataFrame]:
    return assign_sessions(
        frame[list(_SESSION_INPUT)].astype(_SESSION_INPUT),
        channel_id=channel_id,
        timeout_minutes=settings.timeout_minutes,
        plan_time=settings.plan_time,
    )


def _recompute_sessions(
    conn: sa.Connection, tenant_id: str, channel_id: str, contact_ids: ContactIds, settings: _Settings
) -> int:
    """Sessions of these contacts in the channel from the stored rows alone (every message is stored by now)."""
    stored = _stored_messages(conn, channel_id, contact_ids)
    per_row, new_sessions = _assign(stored, channel_id, settings)
    _upsert_sessions(conn, tenant_id, channel_id, new_sessions)
    _reassign_stored(conn, stored, per_row)
    _delete_stale_sessions(conn, channel_id, contact_ids)
    return len(new_sessions)


def _upsert_sessions(conn: sa.Connection, tenant_id: str, channel_id: str, new_sessions: pd.DataFrame) -> None:
    temp_tables.clear(conn, temp_sessions)
    temp_tables.load(conn, temp_sessions, new_sessions)
    ss = temp_sessions.c
    stmt = sql.insert(sessions, conn.dialect)
    select = sa.select(
        ss.id, sa.literal(tenant_id, sa.Text), sa.literal(channel_id, UUID_T), ss.contact_id,
        sql.from_epoch(ss.started_at), sql.from_epoch(ss.ended_at), ss.message_count, ss.messages_from_contact,
        ss.messages_from_agent, ss.status,
    ).where(sa.true())  # fmt: skip
    stmt = stmt.from_select(
        ["id", "tenant_id", "channel_id", "contact_id", "started_at", "ended_at", "message_count",
         "messages_from_contact", "messages_from_agent", "status"], select,
    )  # fmt: skip
    changing = ["started_at", "ended_at", "message_count", "messages_from_contact", "messages_from_agent", "status"]
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={name: stmt.excluded[name] for name in changing},
            where=sa.or_(*(sessions.c[name].is_distinct_from(stmt.excluded[name]) for name in changing)),
        )
    )


def _reassign_stored(conn: sa.Connection, stored: pd.DataFrame, per_row: pd.Series) -> None:
    """Point stored messages at their recomputed session, touching only the rows whose session changed."""
    new_ids = pd.Series(per_row.to_numpy(), index=stored.index, dtype="string")
    changed = stored["session_id"].ne(new_ids).fillna(True).astype(bool)
    if not changed.any():
        return
    temp_tables.clear(conn, temp_assign)
    temp_tables.load(conn, temp_assign, pd.DataFrame({"message_id": stored.loc[changed, "id"],
                                                   "session_id": new_ids[changed]}))  # fmt: skip
    sa_ = temp_assign.c
    conn.execute(sa.update(messages).where(messages.c.id == sa_.message_id).values(session_id=sa_.session_id))


def _delete_stale_sessions(conn: sa.Connection, channel_id: str, contact_ids: ContactIds) -> None:
    conn.execute(
        sa.delete(sessions).where(
            sessions.c.channel_id == channel_id,
            sessions.c.contact_id.in_(contact_ids),
            sessions.c.id.not_in(sa.select(temp_sessions.c.id)),
        )
    )


def update_statuses(conn: sa.Connection, channel_id: str, plan_time: int, timeout_minutes: int) -> None:
    """Every session of the channel: closed when it ended more than the timeout before plan_time (SPEC 6.4)."""
    cutoff = to_utc(plan_time - timeout_minutes * 60)
    status = sa.case((sessions.c.ended_at < cutoff, sa.literal("closed")), else_=sa.literal("open"))
    conn.execute(
        sa.update(sessions).where(sessions.c.channel_id == channel_id, sessions.c.status != status).values(status=status)
    )
