"""Per-transaction temp tables and the bulk load into them (PostgreSQL COPY, SQLite executemany).

A chunk's frames are loaded into TEMP tables once, and every write to the CRM tables is then one set-based
`INSERT ... SELECT` / `UPDATE ... FROM` against them: no per-row round trips, no SELECT-then-INSERT dedup.
On PostgreSQL the tables live as long as the connection and are `ON COMMIT DELETE ROWS` (creating six tables per
chunk cost ~20 ms of catalog writes); on SQLite they are dropped and re-created per chunk.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from waha_pipeline.crm.schema import UUID_T
from waha_pipeline.domain.batch import CONTACT_COLUMNS, MESSAGE_COLUMNS, REJECT_COLUMNS, SESSION_COLUMNS

_meta = sa.MetaData()


# The domain's frame shapes (domain/batch.py) say which columns a temp table has; these say how SQL stores them.
_SQL_TYPES: dict[str, type[sa.types.TypeEngine[Any]]] = {"string": sa.Text, "int64": sa.BigInteger, "bool": sa.Boolean}
_UUID_COLUMNS = frozenset({"id", "contact_id", "session_id", "old_id", "new_id", "message_id"})


def _temp(name: str, columns: Mapping[str, str], primary_key: str | None = None) -> sa.Table:
    """A TEMP table holding frames of the shape `columns` (name -> pandas dtype)."""
    return sa.Table(
        name, _meta,
        *(sa.Column(column, UUID_T if column in _UUID_COLUMNS else _SQL_TYPES[dtype], primary_key=column == primary_key)
          for column, dtype in columns.items()),
        prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS",
    )


temp_contacts = _temp("temp_contacts", CONTACT_COLUMNS, primary_key="id")
# old_id: the lid-only contact that disappears; new_id: the phone contact that takes its messages and lid
temp_merges = _temp("temp_merges", {"old_id": "string", "new_id": "string"}, primary_key="old_id")
temp_messages = _temp("temp_messages", {**MESSAGE_COLUMNS, "session_id": "string"})
temp_rejects = _temp("temp_rejects", REJECT_COLUMNS)
temp_sessions = _temp("temp_sessions", SESSION_COLUMNS, primary_key="id")
temp_assign = _temp("temp_assign", {"message_id": "string", "session_id": "string"}, primary_key="message_id")

ALL = (temp_contacts, temp_merges, temp_messages, temp_rejects, temp_sessions, temp_assign)


def create(conn: sa.Connection) -> None:
    """Make every temp table exist, empty, inside the current transaction."""
    if conn.dialect.name == "postgresql":
        # One round trip; after a connection's first chunk the tables exist and this only checks the catalog.
        conn.exec_driver_sql(_postgres_ddl(conn.dialect))
        return
    for table in ALL:
        table.drop(conn, checkfirst=True)  # left over only if a connection was reused after a crash
        table.create(conn)


@functools.cache
def _postgres_ddl(dialect: sa.Dialect) -> str:
    return ";\n".join(str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)).strip() for t in ALL)


def drop(conn: sa.Connection) -> None:
    """SQLite keeps TEMP tables for the connection's life; PostgreSQL empties them at commit by itself."""
    if conn.dialect.name == "sqlite":
        for table in ALL:
            table.drop(conn, checkfirst=True)


def clear(conn: sa.Connection, table: sa.Table) -> None:
    conn.execute(table.delete())


def load(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """Bulk-load the frame's columns named like the table's (missing ones as NULL); returns the row count."""
    if not len(frame):
        return 0
    names = [c.name for c in table.columns]
    if conn.dialect.name == "postgresql":
        _copy_csv(conn, table.name, names, frame)
    else:
        rows = list(zip(*(_python_values(frame, name) for name in names), strict=True))
        placeholders = ", ".join("?" for _ in names)
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({placeholders})", rows)
    return len(frame)


# -- text PostgreSQL cannot store -------------------------------------------------------------------------------

# PostgreSQL text cannot hold NUL: "invalid byte sequence for encoding UTF8: 0x00" fails the whole COPY. WAHA passes
# it through from WhatsApp clients. Lone surrogates (which no UTF-8 encodes) cannot reach here: orjson refuses them
# in a page, and the frames' Arrow strings cannot hold them.
NUL = "\x00"


def has_nul(values: pd.Series) -> bool:
    """Whether any value of the column holds a NUL; one C-speed pass, no per-row work in the common case."""
    return bool(len(values)) and NUL in "\x1f".join(values.dropna().tolist())


def with_nul(values: pd.Series) -> pd.Series:
    """Per row: True where the text holds a NUL (False for missing values)."""
    if not has_nul(values):
        return pd.Series(False, index=values.index)
    return values.str.contains(NUL, regex=False).fillna(False).astype(bool)


def without_nul(values: pd.Series) -> pd.Series:
    """The texts with their NULs dropped, for names, where the rest is still the right value; the column itself
    when it holds none."""
    if not has_nul(values):
        return values
    return values.str.replace(NUL, "", regex=False)


def _copy_csv(conn: sa.Connection, table: str, names: Sequence[str], frame: pd.DataFrame) -> None:
    """COPY the columns as CSV written by Arrow's C++ writer (formatting row by row in Python was ~5% of the chunk
    workers' CPU in bench `scale`).

    Arrow quotes every string and writes NULL as an empty unquoted field, which is exactly how PostgreSQL's CSV
    format tells an empty string from NULL; quotes are doubled and newlines stay inside the quotes.
    """
    columns = [_arrow(frame, name) for name in names]
    sink = io.BytesIO()
    pa_csv.write_csv(pa.table(columns, names=list(names)), sink, _CSV_OPTIONS)
    driver_connection = conn.connection.driver_connection  # psycopg 3, inside the same transaction
    with driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(sink.getbuffer())


def _arrow(frame: pd.DataFrame, name: str) -> pa.Array:
    """One column as one contiguous Arrow array. A column of a concatenated frame is a ChunkedArray, and Arrow's CSV
    writer garbles a table of chunked columns (NUL bytes from unrelated memory, seen with pyarrow 26)."""
    if name not in frame.columns:
        return pa.nulls(len(frame), pa.string())
    array = pa.Array.from_pandas(frame[name])
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="needed")


def _python_values(frame: pd.DataFrame, name: str) -> list[Any]:
    """One column as plain Python values, missing -> None (drivers adapt neither pd.NA nor numpy scalars)."""
    if name not in frame.columns:
        return [None] * len(frame)
    series = frame[name]
    missing = series.isna()
    if not missing.any() and (pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype)):
        return series.tolist()  # Python bool / int
    values = series.astype(object)
    if missing.any():
        values = values.where(~missing, None)
    return values.tolist()
