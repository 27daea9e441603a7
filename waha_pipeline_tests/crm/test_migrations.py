"""The alembic revisions create exactly the schema in `crm/schema.py`, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from waha_pipeline.crm import schema
from waha_pipeline.crm.migrate import current_revision, upgrade
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.planning import channel_slug


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], ids=["sqlite", "postgres"])
def migrated_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("crm_sqlite_url" if request.param == "sqlite" else "crm_pg_url")


def test_migrations_create_every_table_and_constraint(migrated_url: str) -> None:
    engine = sa.create_engine(migrated_url)
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) >= {t.name for t in schema.metadata.sorted_tables}
        for table in schema.metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("contacts")}
        assert uniques == {("tenant_id", "phone"), ("tenant_id", "lid"), ("tenant_id", "group_id")}
        assert {tuple(u["column_names"]) for u in inspector.get_unique_constraints("messages")} == {
            ("channel_id", "external_id")
        }
        assert {tuple(u["column_names"]) for u in inspector.get_unique_constraints("channels")} == {
            ("tenant_id", "waha_session", "account"), ("slug",)
        }
        assert inspector.get_pk_constraint("import_chunks")["constrained_columns"] == ["plan_id", "chunk_key"]
        message_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("messages")}
        assert {("channel_id", "contact_id", "sent_at"), ("session_id",)} <= message_indexes
        assert ("channel_id", "contact_id") in {tuple(i["column_names"]) for i in inspector.get_indexes("sessions")}
        fks = {(fk["constrained_columns"][0], fk["referred_table"]) for fk in inspector.get_foreign_keys("messages")}
        assert fks == {("channel_id", "channels"), ("contact_id", "contacts"), ("session_id", "sessions")}
        for table in schema.metadata.sorted_tables:
            assert "tenant_id" in {c.name for c in table.columns}, table.name

        with engine.connect() as conn:  # the revision and the Core metadata describe the same schema
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), schema.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_at_head(migrated_url: str) -> None:
    upgrade(migrated_url)
    assert current_revision(migrated_url) == "0006"


def test_store_rejects_unsupported_urls() -> None:
    from waha_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        CrmStore.from_url("mysql://x@localhost/db")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        CrmStore.from_url("not a url")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], ids=["sqlite", "postgres"])
def url_at_0004(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database migrated to 0004 only."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/crm.sqlite"
        upgrade(url, "0004")
        yield url
        return
    from waha_pipeline_tests.conftest import temporary_pg_database

    with temporary_pg_database("waha_test_0005") as url:
        upgrade(url, "0004")
        yield url


def test_0005_keeps_every_channel_and_its_rows_and_gives_each_a_unique_slug(url_at_0004: str) -> None:
    """Channels of 0004 keep their ids, rows and chunk key prefix (the slug of their session name); two tenants'
    channels of one session name get distinct slugs, the older one keeping the plain one."""
    engine = sa.create_engine(url_at_0004)
    rows = [("acme", "default", "2026-01-01 00:00:00+00"), ("beta", "default", "2026-02-01 00:00:00+00"),
            ("acme", "Sales Team", "2026-03-01 00:00:00+00")]
    channel_ids = {}
    try:
        with engine.begin() as conn:
            for n, (tenant, session, created) in enumerate(rows):
                channel_id = ids.channel_id(tenant, session)
                channel_ids[(tenant, session)] = channel_id
                conn.execute(sa.text("insert into channels (id, tenant_id, waha_session, name, created_at) "
                                     "values (:id, :t, :s, 'n', :c)"), {"id": channel_id, "t": tenant, "s": session,
                                                                         "c": created})
                contact = ids.contact_id(tenant, phone=f"55119000{n}")
                conn.execute(sa.text("insert into contacts (id, tenant_id, phone) values (:id, :t, :p)"),
                             {"id": contact, "t": tenant, "p": f"55119000{n}"})
                conn.execute(sa.text(
                    "insert into messages (id, tenant_id, channel_id, contact_id, chat_id, external_id, from_me, "
                    "sent_at, content_type) values (:id, :t, :ch, :co, 'x@c.us', 'e1', false, :c, 'text')"),
                    {"id": ids.message_id(channel_id, "e1"), "t": tenant, "ch": channel_id, "co": contact,
                     "c": created})
        upgrade(url_at_0004, "0005")
        assert current_revision(url_at_0004) == "0005"
        with engine.connect() as conn:
            got = {(r.tenant_id, r.waha_session): (str(r.id), r.slug, r.account, r.waha_server)
                   for r in conn.execute(sa.text("select * from channels"))}
            messages = conn.execute(sa.text("select count(*) from messages")).scalar_one()
        assert messages == 3
        assert {k: v[0] for k, v in got.items()} == channel_ids
        assert got[("acme", "default")][1:] == ("default", None, None)
        assert got[("acme", "Sales Team")][1:] == (channel_slug("Sales Team"), None, None)
        other = got[("beta", "default")][1]
        assert other.startswith("default-") and len(other) == len("default-") + 6
        store = CrmStore(sa.create_engine(url_at_0004))
        try:
            # the next import learns the account of an account-less channel and keeps its id and slug
            claimed = store.ensure_channel("acme", "default", "n", account="5511987654321", waha_server="http://a:1")
            assert (claimed.id, claimed.slug, claimed.account) == (channel_ids[("acme", "default")], "default",
                                                                   "5511987654321")
            second = store.ensure_channel("acme", "default", "n", account="5511900004321", waha_server="http://b:2")
            assert second.id != claimed.id and second.slug == channel_slug("default", "5511900004321")
        finally:
            store.dispose()
    finally:
        engine.dispose()
