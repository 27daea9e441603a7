"""The alembic revisions create exactly the schema in `crm/schema.py`, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from waha_pipeline.crm import schema
from waha_pipeline.crm.migrate import current_revision, upgrade
from waha_pipeline.crm.store import CrmStore


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
            ("tenant_id", "waha_session")
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
    assert current_revision(migrated_url) == "0004"


def test_store_rejects_unsupported_urls() -> None:
    from waha_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        CrmStore.from_url("mysql://x@localhost/db")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        CrmStore.from_url("not a url")
