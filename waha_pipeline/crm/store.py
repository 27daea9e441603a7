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
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from waha_pipeline.crm import commit, coverage_rows, ledger, sql
from waha_pipeline.crm.records import (
    ChannelRecord,
    ChunkRecord,
    CommitResult,
    PlanRecord,
)
from waha_pipeline.crm.schema import (
    channels,
    contacts,
    import_chunks,
    import_plans,
    message_rejects,
    messages,
    sessions,
)
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import ChunkBatch, conform
from waha_pipeline.domain.coverage import Coverage
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.domain.plans import ChannelPlan, PlannedChat
from waha_pipeline.errors import PipelineError

log = logging.getLogger(__name__)


class ImportRunning(PipelineError):
    """Another process holds the channel's import lock: it is importing the channel now."""


class AmbiguousChannel(PipelineError):
    """A WAHA session name that several CRM channels carry (two WAHA servers, or two tenants): name it by slug."""

    def __init__(self, name: str, candidates: list[ChannelRecord]) -> None:
        self.candidates = candidates
        listed = "; ".join(c.label() for c in candidates)
        super().__init__(f"channel {name!r} is ambiguous: {len(candidates)} channels carry that session name "
                         f"({listed}); name one by its slug")

LOCK_POLL_SECONDS = 1.0  # how often a waiting import asks for a channel's import lock again


@dataclass
class _HeldLock:
    """A channel import lock this process holds: the last of its holders to leave releases it, whichever thread
    took it first."""
    holders: int
    release: Callable[[], None]


_HELD: dict[tuple[str, str], _HeldLock] = {}  # (database, channel slug) -> the lock this process holds
_HELD_GUARD = threading.Lock()

STORED_MESSAGE_COLUMNS = {"contact_id": "string", "external_id": "string", "sent_at": "int64", "from_me": "bool"}


class CrmStore:
    """All CRM reads and writes; every method opens its own short transaction.

    `commit_timeouts` are the (lock, statement) seconds that bound a chunk's commit on PostgreSQL."""

    def __init__(self, engine: sa.Engine, commit_timeouts: tuple[float, float] = commit.DEFAULT_TIMEOUTS) -> None:
        self.engine = engine
        self.commit_timeouts = commit_timeouts
        self._plan_chats: tuple[str, dict[str, PlannedChat]] | None = None

    @classmethod
    def from_url(cls, url: str | sa.URL, commit_timeouts: tuple[float, float] = commit.DEFAULT_TIMEOUTS) -> CrmStore:
        return cls(sql.create_engine(url), commit_timeouts)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- channels -------------------------------------------------------------------------------------------

    def ensure_channel(
        self,
        tenant_id: str,
        waha_session: str,
        name: str | None,
        *,
        account: str | None = None,
        waha_server: str | None = None,
    ) -> ChannelRecord:
        """The channel of (tenant, session, account), created when new; its name and server follow WAHA, its
        session timeout setting and its slug never change.

        A channel recorded before accounts were stored (account NULL) is taken over by the first account imported
        under its (tenant, session): it keeps its id, slug and rows. Without `account` the channel is the
        account-less one of (tenant, session).
        """
        if account is None:
            return self._ensure_legacy(tenant_id, waha_session, name, waha_server)
        c = channels.c
        refresh = {"name": name, "waha_server": waha_server}
        with self.engine.begin() as conn:
            ledger.lock_channel_identity(conn, tenant_id, waha_session)
            found = conn.execute(sa.select(channels).where(
                c.tenant_id == tenant_id, c.waha_session == waha_session, c.account == account)).first()
            if found is None:
                claimed = conn.execute(
                    sa.update(channels)
                    .where(c.tenant_id == tenant_id, c.waha_session == waha_session, c.account.is_(None))
                    .values(account=account, updated_at=sa.func.now())
                    .returning(c.id)
                ).first()
                channel_id = str(claimed.id) if claimed else self._insert_channel(
                    conn, tenant_id, waha_session, name, account, waha_server)
            else:
                channel_id = str(found.id)
            changed = {k: v for k, v in refresh.items() if v is not None}
            if changed:
                conn.execute(
                    sa.update(channels)
                    .where(c.id == channel_id,
                           sa.or_(*(getattr(c, k).is_distinct_from(v) for k, v in changed.items())))
                    .values(**changed, updated_at=sa.func.now())
                )
            row = conn.execute(sa.select(channels).where(c.id == channel_id)).one()
        return _channel_record(row._mapping)

    @staticmethod
    def _insert_channel(
        conn: sa.Connection, tenant_id: str, waha_session: str, name: str | None, account: str, waha_server: str | None
    ) -> str:
        """A new channel: its slug is the session's with the account's digest; should another tenant's channel of
        the same session and account hold it, the tenant goes into the digest too."""
        channel_id = ids.channel_id(tenant_id, f"{waha_session}\x1f{account}")
        for slug in (channel_slug(waha_session, account), channel_slug(waha_session, f"{tenant_id}\x1f{account}")):
            inserted = conn.execute(
                sql.insert(channels, conn.dialect)
                .values(id=channel_id, tenant_id=tenant_id, waha_session=waha_session, account=account,
                        waha_server=waha_server, slug=slug, name=name)
                .on_conflict_do_nothing()
                .returning(channels.c.id)
            ).first()
            if inserted is not None:
                return channel_id
        raise PipelineError(f"channel slug {slug!r} is taken by another channel; cannot record {waha_session!r}")

    def _ensure_legacy(
        self, tenant_id: str, waha_session: str, name: str | None, waha_server: str | None
    ) -> ChannelRecord:
        channel_id = ids.channel_id(tenant_id, waha_session)
        with self.engine.begin() as conn:
            stmt = sql.insert(channels, conn.dialect).values(
                id=channel_id, tenant_id=tenant_id, waha_session=waha_session, name=name, waha_server=waha_server,
                slug=channel_slug(waha_session),
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

    def get_channel(self, tenant_id: str, waha_session: str, account: str | None = None) -> ChannelRecord | None:
        """The channel of (tenant, session, account); `account` None: the one whose account is not known yet."""
        c = channels.c
        same_account = c.account.is_(None) if account is None else c.account == account
        return self._one_channel(c.tenant_id == tenant_id, c.waha_session == waha_session, same_account)

    def channel_by_id(self, channel_id: str) -> ChannelRecord | None:
        return self._one_channel(channels.c.id == channel_id)

    def channel_by_slug(self, slug: str) -> ChannelRecord | None:
        return self._one_channel(channels.c.slug == slug)

    def channels_matching(self, slug_or_name: str) -> list[ChannelRecord]:
        """The channel of that slug, else every channel of that WAHA session name (any tenant, any server)."""
        by_slug = self.channel_by_slug(slug_or_name)
        if by_slug is not None:
            return [by_slug]
        stmt = sa.select(channels).where(channels.c.waha_session == slug_or_name).order_by(channels.c.slug)
        with self.engine.connect() as conn:
            return [_channel_record(row._mapping) for row in conn.execute(stmt)]

    def find_channel(self, slug_or_name: str) -> ChannelRecord | None:
        """The one channel of that slug or session name; AmbiguousChannel when a name fits several (never a guess)."""
        found = self.channels_matching(slug_or_name)
        if len(found) > 1:
            raise AmbiguousChannel(slug_or_name, found)
        return found[0] if found else None

    def _one_channel(self, *where: sa.ColumnElement[bool]) -> ChannelRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(channels).where(*where).limit(2)).all()
        if len(row) > 1:
            raise PipelineError("several CRM channels match one identity; the channels table lost its unique key")
        return _channel_record(row[0]._mapping) if row else None

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
        """The chunk of that key in the most recent plan of the channel whose slug prefixes the key (a partition key
        names no plan; the slug names exactly one channel, so another channel's plan is never picked)."""
        slug = chunk_key.rpartition(".")[0]
        with self.engine.connect() as conn:
            plan_id = conn.execute(
                sa.select(import_plans.c.id)
                .join(import_chunks, import_chunks.c.plan_id == import_plans.c.id)
                .join(channels, channels.c.id == import_plans.c.channel_id)
                .where(import_chunks.c.chunk_key == chunk_key, channels.c.slug == slug,
                       import_plans.c.channel_slug == slug)
                .order_by(import_plans.c.plan_time.desc(), import_plans.c.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()
            if plan_id is None:
                return None
            plan = ledger.get_plan(conn, str(plan_id))
            chunk, chats = ledger.load_chunk(conn, str(plan_id), chunk_key)
        assert plan is not None
        return plan, chunk, chats

    def plan_chats(self, plan_id: str, conn: sa.Connection | None = None) -> dict[str, PlannedChat]:
        """Every chat of a plan by chat id (the latest plan asked for is kept: chunks of one run share it). Inside a
        transaction pass its connection: on SQLite a second connection would wait for that transaction's lock."""
        cached = self._plan_chats
        if cached is None or cached[0] != plan_id:
            if conn is not None:
                cached = (plan_id, ledger.plan_chats(conn, plan_id))
            else:
                with self.engine.connect() as own:
                    cached = (plan_id, ledger.plan_chats(own, plan_id))
            self._plan_chats = cached
        return cached[1]

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
    def import_lock(self, channel_slug: str, *, wait_seconds: float = 0.0,
                    on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the channel's import lock while the block runs. While another process holds it, wait up to
        `wait_seconds` (`on_wait` hears who holds it, once), then raise ImportRunning naming the holder.

        The lock is what makes a pending chunk "live": while a process holds it, its pending chunks are being
        worked on; once it is free, pending chunks of the latest plan are stale and re-run. PostgreSQL: a session
        advisory lock on a connection of its own (autocommit, idle), released when the process or the connection
        dies; SQLite: an flock on a file beside the database, released when the process dies. A process that holds
        it already (a CLI import running its chunk runs in process) enters it again at once."""
        key = (self.engine.url.render_as_string(hide_password=True), channel_slug)
        with _HELD_GUARD:
            again = key in _HELD
            if again:
                _HELD[key].holders += 1
        if not again:
            deadline = time.monotonic() + wait_seconds
            release = self._try_import_lock(channel_slug)
            if isinstance(release, str) and on_wait is not None and wait_seconds > 0:
                on_wait(release)
            while isinstance(release, str):
                if time.monotonic() >= deadline:
                    raise ImportRunning(release)
                time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                release = self._try_import_lock(channel_slug)
            with _HELD_GUARD:
                _HELD[key] = _HeldLock(1, release)
        try:
            yield
        finally:
            with _HELD_GUARD:
                held = _HELD[key]
                held.holders -= 1
                last = held.holders == 0
                if last:
                    del _HELD[key]
            if last:
                held.release()

    def _try_import_lock(self, channel_slug: str) -> Callable[[], None] | str:
        """The lock taken (returns how to release it), or who holds it."""
        if self.engine.dialect.name != "postgresql":
            return _try_file_lock(self.engine.url, channel_slug)
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sa.text("SELECT set_config('application_name', :name, false)"), {"name": _holder_name()})
            if not ledger.try_import_lock(conn, channel_slug):
                holder = ledger.import_lock_holder(conn, channel_slug)
                conn.close()
                return f"channel {channel_slug!r} is being imported by {holder or 'another process'}"
        except BaseException:
            conn.close()
            raise

        def release() -> None:
            try:
                ledger.release_import_lock(conn, channel_slug)
                conn.execute(sa.text("RESET application_name"))
            except sa.exc.DBAPIError:  # the connection was lost (and the lock with it): never reuse it
                conn.invalidate()
            finally:
                conn.close()

        return release

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
            return coverage_rows.read(conn, channel_id, chat_ids)

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

    def known_lid_phones(
        self, tenant_id: str, *, phones: Collection[str] | None = None, lids: Collection[str] | None = None
    ) -> dict[str, str]:
        """lid -> phone of the tenant's contacts that carry both: what earlier imports learned, from WAHA's lid
        mapping or from phones WAHA gave inside messages, so a plan resolves a lid chat as they did. With
        `phones`/`lids`, only contacts having one of those."""
        c = contacts.c
        stmt = sa.select(c.lid, c.phone).where(c.tenant_id == tenant_id, c.lid.is_not(None), c.phone.is_not(None))
        if phones is not None or lids is not None:
            stmt = stmt.where(sa.or_(c.phone.in_(sorted(phones or ())), c.lid.in_(sorted(lids or ()))))
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
            return commit.commit_chunk(conn, batch, self.commit_timeouts)


def _holder_name() -> str:
    """The lock connection's application_name, shown to a second import (PostgreSQL keeps 63 bytes)."""
    return f"waha-pipeline pid {os.getpid()} on {socket.gethostname()}"[:63]


def _lock_path(url: sa.URL, channel_slug: str) -> Path | None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().with_name(f"{Path(database).name}.import-{channel_slug}.lock")


def _try_file_lock(url: sa.URL, channel_slug: str) -> Callable[[], None] | str:
    path = _lock_path(url, channel_slug)
    if path is None:  # an in-memory database lives in one process
        return lambda: None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return f"channel {channel_slug!r} is being imported by {holder or 'another process'}"
    handle.seek(0)
    handle.truncate()
    handle.write(_holder_name())
    handle.flush()

    def release() -> None:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    return release


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
        slug=m["slug"],
        account=m["account"],
        waha_server=m["waha_server"],
    )

