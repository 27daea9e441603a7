"""Alembic environment of the CRM schema: runs on a connection handed in by `crm.migrate`, or on DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context

from waha_pipeline.crm.schema import metadata
from waha_pipeline.crm.sql import create_engine

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "sqlite:///.waha/crm.sqlite")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the CRM migrations run online only (use waha_pipeline.crm.migrate.upgrade)")
run_migrations_online()
