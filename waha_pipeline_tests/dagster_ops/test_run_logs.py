"""Warnings of the WAHA client and of the chunk workers reach the Dagster run's event log (dagster.yaml
`python_logs`), so the UI shows why a run was slow or what failed, not only that it did.

The CLI imports over real HTTP from a faulty simulator into PostgreSQL with two chunk worker processes (the worker
path: records logged in another process must be forwarded) against the embedded instance the CLI writes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline_tests.crm_state import committed_chunks
from waha_pipeline_tests.e2e.cli_run import cli

SPEC = DatasetSpec(seed=5, chats=120, target_messages=900)
WORKER_TAG = re.compile(r" \[chunk-worker-\d+\]$")
RETRY = re.compile(r" -> \d{3}; retry \d+ in ")  # waha/client.py, a retried 5xx
CHUNK_FAILED = re.compile(r"^chunk \S+ failed at \S+: ")  # importer/chunk_runner.py


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, sim: Any) -> dict[str, str]:
    values = {"WAHA_BASE_URL": sim.base_url, "DATABASE_URL": pg_url, "DAGSTER_HOME": str(tmp_path / "home"),
              "IMPORT_WORKERS": "2"}
    for name in ("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def warnings_of(instance: dg.DagsterInstance, job_name: str) -> list[str]:
    """The user messages of the Python log records (not Dagster events) at WARNING in the job's runs."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name))
    assert runs, f"no {job_name} run"
    return [
        entry.user_message
        for run in runs
        for entry in instance.all_logs(run.run_id)
        if not entry.is_dagster_event and entry.level == logging.WARNING
    ]


def test_waha_and_worker_warnings_are_in_the_run_event_log(env, sim, capsys) -> None:
    # 5xx on listing chats (the plan, in this process) and on message pages (the chunks, in the workers): retried.
    # A request's fate is drawn from the request itself (simulator/faults.py): the plan's chat list request fails
    # on its first try with this dataset's seed on every run; message pages carry the plan time, so which of them
    # fail varies, but a quarter of some hundred requests never comes to none.
    sim.set_faults(Faults(error_rate=0.25, only_kinds=("chats", "messages")))
    # The channel goes once a chunk has committed: the chunks taken after that fail in their worker.
    sim.delete_session("demo", when=lambda: committed_chunks(env["DATABASE_URL"]) > 0)
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "8")
    assert code == 1, out + err
    assert sim.stats()["faults"]["5xx"] > 0

    instance = dg.DagsterInstance.get()
    plan = warnings_of(instance, "channel_plan_job")
    assert [m for m in plan if RETRY.search(m) and not WORKER_TAG.search(m)], plan
    chunks = warnings_of(instance, "chunk_import_job")
    from_workers = [m for m in chunks if WORKER_TAG.search(m)]
    assert [m for m in from_workers if RETRY.search(m)], chunks  # the WAHA client, in a worker
    assert [m for m in from_workers if CHUNK_FAILED.search(m)], chunks  # the chunk runner, in a worker
    # with two workers this process fetches nothing itself: every WAHA warning of the chunk runs is forwarded
    assert not [m for m in chunks if RETRY.search(m) and not WORKER_TAG.search(m)], chunks
