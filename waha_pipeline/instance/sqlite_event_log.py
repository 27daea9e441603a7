"""Dagster's SQLite event log with its connections kept open: the embedded instance's storage.

The stock SqliteEventLogStorage builds a new engine and opens, commits and closes a connection per event; closing
the last connection of a WAL database checkpoints it, and a new engine compiles every statement afresh. That made
each stored event cost ~25 ms of a 2-core machine, more than a chunk's own work in a small import (bench/). Here an
engine per shard is kept (a few run shards, least recently used first out), so an event costs a few milliseconds.

The webserver's live log view watches `<run_id>.db` for changes, but in WAL mode a commit only appends to
`<run_id>.db-wal`. So each write to a run shard touches the `.db` file's times (a filesystem event the watcher
reports as a modification; it then reads the new rows, WAL included) instead of checkpointing it, which copied
pages and fsynced on every event (bench `scale`: 2.3 -> 1.5 s between runs). SQLite still checkpoints by itself
every 1,000 WAL pages and when the last connection closes. The deployable instance
(dagster.yaml at the project root) uses PostgreSQL and none of this.

It overrides private methods of the stock storage, so it holds for the Dagster release it was verified against
only (VERIFIED_DAGSTER): on any other release the configured storage is the stock SqliteEventLogStorage, with one
warning, and the instance works as Dagster ships it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
import sqlalchemy as sa
from dagster import EventLogEntry, Field, StringSource

# The stock storage, at the path Dagster's API reference documents it (Internals > Event log storage).
from dagster._core.storage.event_log import SqliteEventLogStorage

if TYPE_CHECKING:
    from dagster._serdes import ConfigurableClassData

VERIFIED_DAGSTER = "1.13.27"  # the release whose SqliteEventLogStorage internals this storage builds on
RUNNING_DAGSTER: str = dg.__version__
OPEN_RUN_SHARDS = 8
log = logging.getLogger(__name__)

if RUNNING_DAGSTER == VERIFIED_DAGSTER:
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._batch: dict[str, sa.Connection] | None = None  # shard -> open transaction, during store_event_batch
        self._batch_thread: int | None = None
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> SqliteEventLogStorage:
        """`base_dir` defaults to where the stock storage keeps a DAGSTER_HOME's event logs. On a Dagster release
        other than VERIFIED_DAGSTER this is the stock storage."""
        base_dir = config_value.get("base_dir") or os.path.join(os.environ["DAGSTER_HOME"], "history", "runs")
        if RUNNING_DAGSTER != VERIFIED_DAGSTER:
            log.warning("dagster %s is not the release PooledSqliteEventLogStorage is verified against (%s): using "
                        "Dagster's stock SQLite event log", RUNNING_DAGSTER, VERIFIED_DAGSTER)
            return SqliteEventLogStorage(base_dir, inst_data=inst_data)
        return cls(base_dir, inst_data=inst_data)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """One transaction per shard for the whole batch instead of two per event. Dagster hands a new run's
        ASSET_MATERIALIZATION_PLANNED events (five per chunk) over as one batch when DAGSTER_EVENT_BATCH_SIZE > 0,
        which the CLI sets; on an error nothing of the batch is kept and Dagster stores the events one by one."""
        with self._db_lock:
            self._batch, self._batch_thread = {}, threading.get_ident()
            try:
                for event in events:
                    self.store_event(event)  # its _connect calls join the batch's transactions
            except BaseException:
                for conn in self._batch.values():
                    conn.rollback()
                raise
            else:
                for conn in self._batch.values():
                    conn.commit()
                for shard in self._batch.keys() - {INDEX_SHARD_NAME}:
                    os.utime(self.path_for_shard(shard))
            finally:
                for conn in self._batch.values():
                    conn.close()
                self._batch, self._batch_thread = None, None

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        if self._batch is not None and self._batch_thread == threading.get_ident():
            conn = self._batch.get(shard)
            if conn is None:
                conn = self._batch[shard] = self._engine(shard).connect()
                conn.begin()
            yield conn
            return
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                changes = raw.total_changes  # type: ignore[union-attr]
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and raw.total_changes != changes:  # type: ignore[union-attr]
                    os.utime(self.path_for_shard(shard))

    def _engine(self, shard: str) -> sa.Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = sa.create_engine(
            self.conn_string_for_shard(shard),
            pool_size=1,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        # WAL + NORMAL: a commit is not fsynced (the checkpoint is); an OS crash may lose the last events, never
        # corrupt the file. The CRM ledger, not this log, is what an import's outcome is read from.
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=NORMAL"))
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        run_shards = [s for s in self._engines if s != INDEX_SHARD_NAME]
        for old in run_shards[: max(0, len(run_shards) - OPEN_RUN_SHARDS)]:
            self._engines.pop(old).dispose()
        return engine

    def _dispose_engines(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._dispose_engines()  # no open handle may outlive an unlinked file
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()
