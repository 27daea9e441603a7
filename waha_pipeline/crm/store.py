"""CrmStore: the CRM database behind one SQLAlchemy engine (PostgreSQL in production, SQLite embedded).

`commit_chunk` writes a chunk's contacts, messages, rejects, sessions and ledger row in ONE transaction
(SPEC 6.6), idempotently (SPEC 6.7): staged bulk loads, `INSERT ... ON CONFLICT`, deterministic ids, and
sessions recomputed inside the transaction from every stored + new message of the affected contacts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from waha_pipeline.crm import commit, coverage, ledger, sql
from waha_pipeline.crm.records import ChannelRecord, ChunkRecord, CommitResult, PlanRecord
from waha_pipeline.crm.schema import (
    channels, contacts, import_chunks, import_plans, message_rejects, messages, sessions,
)
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import ChunkBatch, conform
from waha_pipeline.domain.coverage import Coverage
from waha_pipeline.domain.planning import ChannelPlan, PlannedChat
from waha_pipeline.errors import PipelineError

log = logging.getLogger(__name__)


class ImportRunning(PipelineError):
    """Another process holds the channel's import lock: it is importing the channel now."""

STORED_MESSAGE_COLUMNS = {"contact_id": "string", "external_id": "string", "sent_at": "int64", "from_me": "bool"}


class CrmStore:
    """All CRM reads and writes; every method opens its own short transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str | sa.URL) -> CrmStore:
        return cls(sql.create_engine(url))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- channels -------------------------------------------------------------------------------------------

    def ensure_channel(self, tenant_id: str, waha_session: str, name: str | None) -> ChannelRecord:
        """Create or refresh the channel (name only); its session timeout setting is never overwritten."""
        channel_id = ids.channel_id(tenant_id, waha_session)
        with self.engine.begin() as conn:
            stmt = sql.insert(channels, conn.dialect).values(
                id=channel_id, tenant_id=tenant_id, waha_session=waha_session, name=name
            )
            new_name = sa.func.coalesce(stmt.excluded.name, channels.c.name)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"name": new_name, "updated_at": sa.func.now()},
                    where=new_name.is_distinct_from(channels.c.name),
                )
            )
            row = conn.execute(sa.select(channels).where(channels.c.id == channel_id)).one()
        return _channel_record(row._mapping)

    def get_channel(self, tenant_id: str, waha_session: str) -> ChannelRecord | None:
        return self._one_channel(channels.c.tenant_id == tenant_id, channels.c.waha_session == waha_session)

    def channel_by_id(self, channel_id: str) -> ChannelRecord | None:
        return self._one_channel(channels.c.id == channel_id)

    def find_channel(self, waha_session: str) -> ChannelRecord | None:
        """The channel of that WAHA session in any tenant; the most recently updated when several exist."""
        return self._one_channel(channels.c.waha_session == waha_session)

    def _one_channel(self, *where: sa.ColumnElement[bool]) -> ChannelRecord | None:
        stmt = sa.select(channels).where(*where).order_by(channels.c.updated_at.desc(), channels.c.created_at.desc())
        with self.engine.connect() as conn:
            row = conn.execute(stmt.limit(1)).first()
        return None if row is None else _channel_record(row._mapping)

    # -- ledger ---------------------------------------------------------------------------------------------

    def record_plan(self, tenant_id: str, channel_id: str, plan: ChannelPlan, plan_id: str) -> None:
        """Statuses follow the latest plan at once, also when it leaves every chat out as up to date (SPEC 6.4)."""
        with self.engine.begin() as conn:
            ledger.lock_channel(conn, channel_id)
            ledger.record_plan(conn, tenant_id, channel_id, plan, plan_id)
            commit.update_statuses(conn, channel_id, plan.plan_time, plan.session_timeout_minutes)

    def latest_plan(self, channel_id: str) -> PlanRecord | None:
        with self.engine.connect() as conn:
            return ledger.latest_plan(conn, channel_id)

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        with self.engine.connect() as conn:
            return ledger.get_plan(conn, plan_id)

    def plan_chunks(self, plan_id: str) -> list[ChunkRecord]:
        with self.engine.connect() as conn:
            return ledger.plan_chunks(conn, plan_id)

    def load_chunk(self, plan_id: str, chunk_key: str) -> tuple[ChunkRecord, list[PlannedChat]]:
        with self.engine.connect() as conn:
            return ledger.load_chunk(conn, plan_id, chunk_key)

    def latest_chunk(self, chunk_key: str) -> tuple[PlanRecord, ChunkRecord, list[PlannedChat]] | None:
        """The chunk of that key in the most recent plan that has it (a partition key names no plan)."""
        with self.engine.connect() as conn:
            plan_id = conn.execute(
                sa.select(import_plans.c.id)
                .join(import_chunks, import_chunks.c.plan_id == import_plans.c.id)
                .where(import_chunks.c.chunk_key == chunk_key)
                .order_by(import_plans.c.plan_time.desc(), import_plans.c.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()
            if plan_id is None:
                return None
            plan = ledger.get_plan(conn, str(plan_id))
            chunk, chats = ledger.load_chunk(conn, str(plan_id), chunk_key)
        assert plan is not None
        return plan, chunk, chats

    def committed_chunk_keys(self, plan_id: str) -> set[str]:
        with self.engine.connect() as conn:
            return ledger.committed_chunk_keys(conn, plan_id)

    def mark_chunk_started(self, plan_id: str, chunk_key: str) -> None:
        with self.engine.begin() as conn:
            ledger.mark_chunk_started(conn, plan_id, chunk_key)

    def mark_chunk_failed(self, plan_id: str, chunk_key: str, error: str) -> None:
        with self.engine.begin() as conn:
            ledger.mark_chunk_failed(conn, plan_id, chunk_key, error)

    def fail_pending_chunks(self, plan_id: str, chunk_keys: Collection[str], reason: str) -> list[str]:
        with self.engine.begin() as conn:
            return ledger.fail_pending_chunks(conn, plan_id, chunk_keys, reason)

    # -- the import lock --------------------------------------------------------------------------------------

    @contextmanager
    def import_lock(self, channel_slug: str) -> Iterator[None]:
        """Hold the channel's import lock while the block runs, or raise ImportRunning naming the holder.

        The lock is what makes a pending chunk "live": while a process holds it, its pending chunks are being
        worked on; once it is free, pending chunks of the latest plan are stale and re-run. PostgreSQL: a session
        advisory lock on a connection of its own (autocommit, idle), released when the process or the connection
        dies; SQLite: an flock on a file beside the database, released when the process dies."""
        if self.engine.dialect.name != "postgresql":
            with _file_lock(self.engine.url, channel_slug):
                yield
            return
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sa.text("SELECT set_config('application_name', :name, false)"), {"name": _holder_name()})
            if not ledger.try_import_lock(conn, channel_slug):
                holder = ledger.import_lock_holder(conn, channel_slug)
                raise ImportRunning(f"channel {channel_slug!r} is being imported by {holder or 'another process'}")
            try:
                yield
            finally:
                try:
                    ledger.release_import_lock(conn, channel_slug)
                    conn.execute(sa.text("RESET application_name"))
                except sa.exc.DBAPIError:  # the connection was lost (and the lock with it): never reuse it
                    conn.invalidate()
        finally:
            conn.close()

    def import_lock_holder(self, channel_slug: str) -> str | None:
        """Who imports the channel now (None: nobody, so its pending chunks are stale)."""
        if self.engine.dialect.name != "postgresql":
            return _file_lock_holder(self.engine.url, channel_slug)
        with self.engine.connect() as conn:
            return ledger.import_lock_holder(conn, channel_slug)

    # -- readers --------------------------------------------------------------------------------------------

    def stored_messages(self, channel_id: str, contact_ids: list[str]) -> pd.DataFrame:
        """Every stored message of these contacts in the channel: contact_id, external_id, sent_at, from_me."""
        if not contact_ids:
            return conform(pd.DataFrame(), STORED_MESSAGE_COLUMNS)
        stmt = sa.select(
            messages.c.contact_id,
            messages.c.external_id,
            sql.epoch_seconds(messages.c.sent_at).label("sent_at"),
            messages.c.from_me,
        ).where(messages.c.channel_id == channel_id, messages.c.contact_id.in_(sorted(set(contact_ids))))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return conform(pd.DataFrame(rows, columns=list(STORED_MESSAGE_COLUMNS)), STORED_MESSAGE_COLUMNS)

    def chat_coverage(self, channel_id: str, chat_ids: Collection[str] | None = None) -> dict[str, Coverage]:
        """What each chat (default: every chat of the channel) already has in the CRM, so a re-import plans and
        fetches only the rest (domain.coverage)."""
        with self.engine.connect() as conn:
            return coverage.read(conn, channel_id, chat_ids)

    def latest_push_names(self, channel_id: str, contact_ids: Collection[str]) -> pd.DataFrame:
        """Per contact, its latest stored inbound message with a push name: contact_id, sent_at, external_id,
        push_name. Lets a re-import that fetched only new messages name a contact as a clean import would."""
        columns = {"contact_id": "string", "sent_at": "int64", "external_id": "string", "push_name": "string"}
        if not contact_ids:
            return conform(pd.DataFrame(), columns)
        ranked = (
            sa.select(
                messages.c.contact_id,
                sql.epoch_seconds(messages.c.sent_at).label("sent_at"),
                messages.c.external_id,
                messages.c.push_name,
                sa.func.row_number().over(
                    partition_by=messages.c.contact_id,
                    order_by=(messages.c.sent_at.desc(), messages.c.external_id.desc()),
                ).label("rank"),
            )
            .where(
                messages.c.channel_id == channel_id,
                messages.c.contact_id.in_(sorted(set(contact_ids))),
                messages.c.from_me.is_(False),
                messages.c.push_name.is_not(None),
                messages.c.push_name != "",
            )
            .subquery()
        )
        stmt = sa.select(ranked.c.contact_id, ranked.c.sent_at, ranked.c.external_id, ranked.c.push_name).where(
            ranked.c.rank == 1
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return conform(pd.DataFrame(rows, columns=list(columns)), columns)

    def known_lid_phones(self, tenant_id: str) -> dict[str, str]:
        """lid -> phone of the tenant's contacts that carry both: what earlier imports learned, from WAHA's lid
        mapping or from phones WAHA gave inside messages, so a plan resolves a lid chat as they did."""
        c = contacts.c
        stmt = sa.select(c.lid, c.phone).where(c.tenant_id == tenant_id, c.lid.is_not(None), c.phone.is_not(None))
        with self.engine.connect() as conn:
            return {str(lid): str(phone) for lid, phone in conn.execute(stmt)}

    def counts(self, channel_id: str) -> dict[str, int]:
        """Row counts of the channel: messages, contacts (with a message in it), sessions, rejects."""
        m = messages.c
        queries = {
            "messages": sa.select(sa.func.count()).select_from(messages).where(m.channel_id == channel_id),
            "contacts": sa.select(sa.func.count(sa.distinct(m.contact_id))).where(m.channel_id == channel_id),
            "sessions": sa.select(sa.func.count()).select_from(sessions).where(sessions.c.channel_id == channel_id),
            "rejects": sa.select(sa.func.count())
            .select_from(message_rejects)
            .where(message_rejects.c.channel_id == channel_id),
        }
        with self.engine.connect() as conn:
            return {name: int(conn.execute(stmt).scalar_one()) for name, stmt in queries.items()}

    # -- the chunk transaction --------------------------------------------------------------------------------

    def commit_chunk(self, batch: ChunkBatch) -> CommitResult:
        """Commit the chunk in one transaction; on any error nothing of it is written and the error is raised."""
        with self.engine.begin() as conn:
            return commit.commit_chunk(conn, batch)


def _holder_name() -> str:
    """The lock connection's application_name, shown to a second import (PostgreSQL keeps 63 bytes)."""
    return f"waha-pipeline pid {os.getpid()} on {socket.gethostname()}"[:63]


def _lock_path(url: sa.URL, channel_slug: str) -> Path | None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().with_name(f"{Path(database).name}.import-{channel_slug}.lock")


@contextmanager
def _file_lock(url: sa.URL, channel_slug: str) -> Iterator[None]:
    path = _lock_path(url, channel_slug)
    if path is None:  # an in-memory database lives in one process
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ImportRunning(
                f"channel {channel_slug!r} is being imported by {handle.read().strip() or 'another process'}"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(_holder_name())
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_lock_holder(url: sa.URL, channel_slug: str) -> str | None:
    path = _lock_path(url, channel_slug)
    if path is None or not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _channel_record(m: Any) -> ChannelRecord:
    return ChannelRecord(
        id=str(m["id"]),
        tenant_id=m["tenant_id"],
        waha_session=m["waha_session"],
        name=m["name"],
        session_timeout_minutes=m["session_timeout_minutes"],
    )

