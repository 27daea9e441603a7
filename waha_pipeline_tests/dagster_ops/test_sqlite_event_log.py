"""PooledSqliteEventLogStorage against real SQLite files in a DAGSTER_HOME, the way the CLI's instance uses it.

Pins: what one instance writes, another process-level instance reads (as the webserver would); a watcher on a
run sees the run's events live (the webserver's run view watches `<run_id>.db`); only a few run shards stay open;
wipe leaves no handle on an unlinked file; a batch of events is stored whole or not at all.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage

from waha_pipeline.cli.commands import DEFAULT_INSTANCE_YAML
from waha_pipeline.instance import sqlite_event_log
from waha_pipeline.instance.sqlite_event_log import OPEN_RUN_SHARDS, PooledSqliteEventLogStorage

PARTITIONS = 40


@dg.op(out={})
def materialize_partitions() -> Iterator[dg.AssetMaterialization]:
    for k in range(PARTITIONS):
        yield dg.AssetMaterialization(asset_key="chunk", partition=f"p{k:03d}", metadata={"k": k})


@dg.job
def partitions_job() -> None:
    materialize_partitions()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "dagster.yaml").write_text(DEFAULT_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    return tmp_path


def _quiet_run(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return partitions_job.execute_in_process(
        instance=instance, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    )


def test_the_default_instance_uses_it_and_another_instance_reads_every_event(home: Path) -> None:
    with dg.DagsterInstance.get() as writer:
        assert isinstance(writer.event_log_storage, PooledSqliteEventLogStorage)
        # steps' stdout/stderr are not captured: no `tail -F` processes per run
        assert type(writer.compute_log_manager).__name__ == "NoOpComputeLogManager"
        result = _quiet_run(writer)
        with dg.DagsterInstance.get() as reader:  # a second storage object, as in the webserver process
            records = reader.fetch_materializations(dg.AssetKey("chunk"), limit=1000).records
            assert sorted(r.partition_key for r in records) == [f"p{k:03d}" for k in range(PARTITIONS)]
            logs = reader.all_logs(result.run_id)
            assert sum(1 for e in logs if e.dagster_event and e.dagster_event.is_step_materialization) == PARTITIONS
            assert reader.get_run_by_id(result.run_id).is_success  # type: ignore[union-attr]
    assert (home / "history" / "runs" / f"{result.run_id}.db").exists()


def test_a_watcher_sees_a_run_s_events_while_it_runs(home: Path) -> None:
    seen: list[str] = []
    done = threading.Event()

    def on_event(entry: object, cursor: str) -> None:
        event = getattr(entry, "dagster_event", None)
        if event is not None and event.is_step_materialization:
            seen.append(event.partition)
            if len(seen) == PARTITIONS:
                done.set()

    with dg.DagsterInstance.get() as writer, dg.DagsterInstance.get() as webserver:
        run_id = str(uuid.uuid4())
        webserver.watch_event_logs(run_id, None, on_event)  # before any event: the file watch must fire
        try:
            partitions_job.execute_in_process(instance=writer, run_id=run_id)
            assert done.wait(timeout=30), f"the watcher saw {len(seen)} of {PARTITIONS} materializations"
        finally:
            webserver.end_watch_event_logs(run_id, on_event)
    assert sorted(seen) == [f"p{k:03d}" for k in range(PARTITIONS)]


def test_only_a_few_run_shards_stay_open_and_wipe_closes_them(home: Path) -> None:
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        run_ids = [_quiet_run(instance).run_id for _ in range(OPEN_RUN_SHARDS + 3)]
        open_shards = [s for s in storage._engines if s != "index"]
        assert len(open_shards) == OPEN_RUN_SHARDS
        assert open_shards == run_ids[-OPEN_RUN_SHARDS:]
        assert len(instance.all_logs(run_ids[0])) > PARTITIONS  # an evicted shard is reopened on demand
        instance.wipe()
        assert storage._engines == {} or set(storage._engines) <= {"index"}
        assert not list((home / "history" / "runs").glob(f"{run_ids[0]}.db"))


def _replayed(instance: dg.DagsterInstance, run_id: str) -> list[EventLogEntry]:
    """A finished run's events under a new run id: a batch to store again."""
    return [entry._replace(run_id=run_id) for entry in instance.all_logs(_quiet_run(instance).run_id)]


def test_a_batch_lands_whole_in_the_run_shard_and_the_index(home: Path) -> None:
    with dg.DagsterInstance.get() as writer, dg.DagsterInstance.get() as reader:
        storage = writer.event_log_storage
        run_id = str(uuid.uuid4())
        batch = _replayed(writer, run_id)
        storage.store_event_batch(batch)
        assert [e.dagster_event_type for e in reader.all_logs(run_id)] == [e.dagster_event_type for e in batch]
        indexed = reader.fetch_materializations(dg.AssetKey("chunk"), limit=1000).records
        assert sum(1 for r in indexed if r.run_id == run_id) == PARTITIONS
        storage.store_event(batch[0]._replace(run_id=str(uuid.uuid4())))  # the lock and the shards are free again


def test_a_failing_batch_keeps_nothing_so_dagster_can_store_it_event_by_event(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.DagsterInstance.get() as writer:
        storage = writer.event_log_storage
        run_id = str(uuid.uuid4())
        batch = _replayed(writer, run_id)
        real_store = storage.store_event
        stored: list[EventLogEntry] = []

        def store_then_fail(event: EventLogEntry) -> None:
            if len(stored) == PARTITIONS // 2:
                raise OSError("disk full")
            real_store(event)
            stored.append(event)

        monkeypatch.setattr(storage, "store_event", store_then_fail)
        with pytest.raises(OSError, match="disk full"):
            storage.store_event_batch(batch)
        monkeypatch.setattr(storage, "store_event", real_store)
        assert writer.all_logs(run_id) == []
        assert not [r for r in writer.fetch_materializations(dg.AssetKey("chunk"), limit=1000).records
                    if r.run_id == run_id]
        for event in batch:  # Dagster's fallback after a failed batch
            storage.store_event(event)
        assert len(writer.all_logs(run_id)) == len(batch)


def test_on_another_dagster_release_the_stock_storage_stores_and_serves_every_event(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_event_log, "RUNNING_DAGSTER", "1.14.0")
    with dg.DagsterInstance.get() as writer:
        assert type(writer.event_log_storage) is SqliteEventLogStorage
        result = _quiet_run(writer)
        with dg.DagsterInstance.get() as reader:
            records = reader.fetch_materializations(dg.AssetKey("chunk"), limit=1000).records
            assert sorted(r.partition_key for r in records) == [f"p{k:03d}" for k in range(PARTITIONS)]
            assert reader.get_run_by_id(result.run_id).is_success  # type: ignore[union-attr]
    assert "dagster 1.14.0 is not the release PooledSqliteEventLogStorage is verified against (1.13.27)" in caplog.text
