"""CRM fixtures: a migrated store on SQLite (tmp file) and on a real PostgreSQL, plus hand-built chunk batches.

PostgreSQL: one fresh database per test session, created from WAHA_TEST_PG_ADMIN_URL, migrated with
`crm.migrate.upgrade`, truncated before each test and dropped at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from waha_pipeline.crm import schema
from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import (
    CONTACT_COLUMNS,
    MESSAGE_COLUMNS,
    REJECT_COLUMNS,
    ChunkBatch,
    ChunkContext,
    conform,
    empty_frame,
)
from waha_pipeline.domain.planning import ChannelPlan, ChunkPlan, PlannedChat
from waha_pipeline.importer.background_loop import BackgroundLoop
from waha_pipeline.importer.chunk_runner import ChunkRunner
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.limiter import ServerLimiter

CRM_PG_ADMIN_URL = os.environ.get("WAHA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

TENANT = "acme"
SESSION = "sales"
PLAN_TIME = 1_700_000_000
TIMEOUT = 30


# ---------------------------------------------------------------------------------------------- FIXTURES


@pytest.fixture(scope="session")
def crm_pg_url() -> Iterator[str]:
    admin = sa.create_engine(CRM_PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"waha_test_crm_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated identifier, not a value
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {CRM_PG_ADMIN_URL}: {exc.orig}")
    url = sa.make_url(CRM_PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def crm_pg_store(crm_pg_url: str) -> Iterator[CrmStore]:
    store = CrmStore.from_url(crm_pg_url)
    yield store
    store.dispose()


@pytest.fixture
def crm_sqlite_url(tmp_path: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path}/crm/crm.sqlite"  # the parent directory does not exist yet: upgrade creates it
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], ids=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[CrmStore]:
    """A migrated, empty CRM store on each backend."""
    if request.param == "sqlite":
        sqlite_store = CrmStore.from_url(request.getfixturevalue("crm_sqlite_url"))
        yield sqlite_store
        sqlite_store.dispose()
        return
    pg_store: CrmStore = request.getfixturevalue("crm_pg_store")
    tables = ", ".join(t.name for t in schema.metadata.sorted_tables)
    with pg_store.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
    yield pg_store


# ---------------------------------------------------------------------------------------------- BUILDERS


def phone_contact(phone: str, *, lid: str | None = None, name: str | None = None) -> dict[str, object]:
    return {"id": ids.contact_id(TENANT, phone=phone), "phone": phone, "lid": lid, "group_id": None, "name": name}


def lid_contact(lid: str, *, name: str | None = None) -> dict[str, object]:
    return {"id": ids.contact_id(TENANT, lid=lid), "phone": None, "lid": lid, "group_id": None, "name": name}


def message(
    channel_id: str, contact: dict[str, object], external_id: str, sent_at: int, *, from_me: bool = False,
    chat_id: str | None = None, body: str | None = "hi", push_name: str | None = None,
) -> dict[str, object]:  # fmt: skip
    chat = chat_id or (f"{contact['phone']}@c.us" if contact["phone"] else f"{contact['lid']}@lid")
    return {
        "id": ids.message_id(channel_id, external_id),
        "contact_id": contact["id"],
        "chat_id": chat,
        "external_id": external_id,
        "from_me": from_me,
        "sent_at": sent_at,
        "content_type": "text",
        "body": body,
        "sender_id": None,
        "push_name": push_name,
    }


def reject(channel_id: str, chat_id: str, external_id: str | None, reason: str) -> dict[str, object]:
    key = external_id or "digest-of-payload"
    return {
        "id": ids.reject_id(channel_id, chat_id, key),
        "chat_id": chat_id,
        "external_id": external_id,
        "reason": reason,
        "payload": '{"id": null}',
    }


def planned_chats(contacts: list[dict[str, object]]) -> tuple[PlannedChat, ...]:
    return tuple(
        PlannedChat(
            chat_id=f"{c['phone']}@c.us" if c["phone"] else f"{c['lid']}@lid",
            kind="direct" if c["phone"] else "lid",
            name=c["name"],  # type: ignore[arg-type]
            phone=c["phone"],  # type: ignore[arg-type]
            lid=c["lid"],  # type: ignore[arg-type]
        )
        for c in contacts
    )


def make_plan(*, plan_time: int = PLAN_TIME, timeout: int = TIMEOUT, chunks: int = 2, days: int = 180,
              chats: tuple[PlannedChat, ...] = ()) -> ChannelPlan:  # fmt: skip
    return ChannelPlan(
        waha_session=SESSION,
        channel_slug=SESSION,
        plan_time=plan_time,
        window_start=None if days == 0 else plan_time - days * 86400,
        window_end=plan_time,
        days=days,
        chunk_size=50,
        session_timeout_minutes=timeout,
        include_groups=False,
        chunks=tuple(
            ChunkPlan(key=f"{SESSION}.c{k:04d}", index=k, chats=chats if k == 0 else ()) for k in range(chunks)
        ),
        skipped={"broadcast": 1},
    )


class Importer:
    """Builds and commits hand-made batches for one channel of a store, recording the plan first."""

    def __init__(self, store: CrmStore) -> None:
        self.store = store
        self.channel = store.ensure_channel(TENANT, SESSION, "Sales")
        self.channel_id = self.channel.id

    def plan(self, *, plan_time: int = PLAN_TIME, timeout: int = TIMEOUT, chunks: int = 2) -> str:
        plan_id = ids.plan_id(self.channel_id, plan_time)
        self.store.record_plan(TENANT, self.channel_id, make_plan(plan_time=plan_time, timeout=timeout, chunks=chunks), plan_id)
        return plan_id

    def batch(
        self, contacts: list[dict[str, object]], messages: list[dict[str, object]], *, rejects: list[dict[str, object]] = (),  # type: ignore[assignment]
        plan_time: int = PLAN_TIME, timeout: int = TIMEOUT, chunk: int = 0, record: bool = True,
    ) -> ChunkBatch:  # fmt: skip
        plan_id = self.plan(plan_time=plan_time, timeout=timeout) if record else ids.plan_id(self.channel_id, plan_time)
        context = ChunkContext(
            tenant_id=TENANT,
            channel_id=self.channel_id,
            plan_id=plan_id,
            chunk_key=f"{SESSION}.c{chunk:04d}",
            plan_time=plan_time,
            window_start=plan_time - 180 * 86400,
            window_end=plan_time,
            session_timeout_minutes=timeout,
        )
        return ChunkBatch(
            context=context,
            contacts=_frame(contacts, CONTACT_COLUMNS),
            messages=_frame(messages, MESSAGE_COLUMNS),
            rejects=_frame(list(rejects), REJECT_COLUMNS),
            chats=len(contacts),
        )


def _frame(rows: list[dict[str, object]], columns: dict[str, str]) -> pd.DataFrame:
    return conform(pd.DataFrame(rows), columns) if rows else empty_frame(columns)


@pytest.fixture
def importer(store: CrmStore) -> Importer:
    return Importer(store)


VOLATILE = {"created_at", "updated_at", "committed_at"}


def snapshot(store: CrmStore) -> dict[str, list[tuple[object, ...]]]:
    """Every CRM row (ledger excluded), minus wall-clock columns, sorted: equal snapshots = equal state."""
    out: dict[str, list[tuple[object, ...]]] = {}
    with store.engine.connect() as conn:
        for table in (schema.contacts, schema.sessions, schema.messages, schema.message_rejects):
            cols = [c for c in table.columns if c.name not in VOLATILE]
            rows = conn.execute(sa.select(*cols)).all()
            out[table.name] = sorted((tuple(str(v) for v in row) for row in rows))
    return out


def run_single_chat_chunks(
    store: CrmStore, importer: Importer, tmp_path: Path, phones: list[str], server: Any, **runner: Any
) -> tuple[str, list[Any]]:
    """Record a plan of one direct chat per chunk (one day before PLAN_TIME) and run every chunk through a
    ChunkRunner against `server` (waha conftest's StoreServer, serving those chats): (plan id, the events)."""
    chats = [PlannedChat(f"{p}@c.us", "direct", None, phone=p, lid=None) for p in phones]
    plan = ChannelPlan(
        waha_session=SESSION, channel_slug=SESSION, plan_time=PLAN_TIME, window_start=PLAN_TIME - 86400,
        window_end=PLAN_TIME, days=1, chunk_size=1, session_timeout_minutes=30, include_groups=False,
        chunks=tuple(ChunkPlan(f"{SESSION}.c{k:04d}", k, (chat,)) for k, chat in enumerate(chats)),
    )
    plan_id = ids.plan_id(importer.channel_id, PLAN_TIME)
    store.record_plan(TENANT, importer.channel_id, plan, plan_id)
    with BackgroundLoop() as serving:
        serving.run(server.__aenter__())
        try:
            chunk_runner = ChunkRunner(store, StageStore(tmp_path), lambda: WahaClient(
                server.base_url, limiter=ServerLimiter(server.base_url, concurrency=4)), **runner)
            return plan_id, list(chunk_runner.run([c.key for c in plan.chunks], set(STAGES)))
        finally:
            serving.run(server.__aexit__())
