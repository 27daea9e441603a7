"""Engine construction and the few dialect-specific SQL pieces the CRM needs (PostgreSQL and SQLite only).

Everything else in `crm/` is dialect-neutral Core built on these helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from waha_pipeline.errors import ConfigError

SUPPORTED_BACKENDS = ("postgresql", "sqlite")


def create_engine(url: str | sa.URL) -> sa.Engine:
    """An engine for the CRM: pool_pre_ping; on SQLite real transactions, foreign keys and a busy timeout."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL: cannot parse {str(url)!r}") from exc
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigError(f"DATABASE_URL: unsupported backend {backend!r} (use postgresql:// or sqlite:///)")
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    return sa.create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"timeout": 30})

    # pysqlite's implicit transactions skip DDL and begin lazily; take control so that a chunk's temp tables,
    # upserts and deletes share one transaction, and take the write lock up front (no upgrade deadlocks when
    # several Dagster runs write the embedded database at once).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def insert(table: sa.Table, dialect: sa.Dialect) -> Any:
    """An INSERT with `.on_conflict_do_nothing/_do_update` for the connection's dialect."""
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class epoch_seconds(FunctionElement[int]):
    """A timestamp column as whole Unix seconds (bigint)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(epoch_seconds, "postgresql")
def _epoch_pg(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(floor(extract(epoch FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


class from_epoch(FunctionElement[Any]):
    """Unix seconds -> the stored timestamp representation (timestamptz; SQLAlchemy's text format on SQLite)."""

    inherit_cache = True

    def __init__(self, *args: Any, type_: Any = None) -> None:
        from waha_pipeline.crm.schema import UtcDateTime

        super().__init__(*args)
        self.type = type_ or UtcDateTime()


@compiles(from_epoch, "postgresql")
def _from_epoch_pg(element: from_epoch, compiler: Any, **kw: Any) -> str:
    return f"to_timestamp({compiler.process(element.clauses, **kw)})"


@compiles(from_epoch, "sqlite")
def _from_epoch_sqlite(element: from_epoch, compiler: Any, **kw: Any) -> str:
    # The exact text SQLAlchemy's SQLite DATETIME writes, so Core-written and bulk-written rows compare equal.
    return f"strftime('%Y-%m-%d %H:%M:%S.000000', {compiler.process(element.clauses, **kw)}, 'unixepoch')"
