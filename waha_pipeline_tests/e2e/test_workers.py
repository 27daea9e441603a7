"""Chunk work on several worker processes (importer/workers.py): a worker that dies costs only its unfinished
chunks (the step retry redoes them), and workers never outlive the import that started them.

Real processes, a real simulator over HTTP and PostgreSQL; workers are killed with SIGKILL, nothing is mocked.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.importer.workers import ChunkWorkerError, RunnerSpec, run_in_workers

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected

SPEC = DatasetSpec(seed=5, chats=240, target_messages=1500)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        handle.set_faults(Faults(latency_ms=15))  # slow enough that a worker can be killed with chunks to go
        yield handle


def committed(url: str) -> int:
    try:
        return sum(c["status"] == "committed" for c in latest_plan(url)["chunks"])
    except Exception:  # noqa: BLE001 - the schema or the plan may not exist yet
        return 0


def grandchildren(pid: int) -> set[int]:
    """Processes two levels below `pid`, from /proc: the workers (children of the fork server, a child of the import)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children = {child for child, parent in parents.items() if parent == pid}
    return {child for child, parent in parents.items() if parent in children}


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_costs_only_its_unfinished_chunks(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    killed: list[tuple[str, int]] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            workers = [p for p in mp.active_children() if p.name.startswith("chunk-worker-")]
            if len(workers) == 2 and committed(url) >= 2:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append((workers[0].name, workers[0].pid))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10")
    killer.join(timeout=5)

    assert killed, "no worker was killed: the import finished first or ran without workers"
    assert code == 0, out + err  # the step retry redid what the dead worker left
    assert_matches(snapshot(url), expected(sim, url))
    instance = dg.DagsterInstance.get()
    [run] = instance.get_runs(filters=dg.RunsFilter(job_name="chunk_import_job"))
    logs = [entry.user_message for entry in instance.all_logs(run.run_id)]
    lost = {text.split()[1] for text in logs if f"chunk worker process {killed[0][1]} exited (code -9)" in text}
    # The dead worker held at most the chunk it worked on and the one it had taken ahead (a worker's prefetch is 1;
    # none when it was killed between chunks): only those failed, and the step retry redid them; the other
    # worker's chunks never failed.
    assert len(lost) <= 2, lost
    assert {text.split()[1] for text in logs if " failed at " in text} == lost


def test_workers_do_not_outlive_a_killed_import(env, sim) -> None:
    """Killed while every worker waits on WAHA: they go at once, not when their next event finds the pipe closed.
    WAHA's message pages hang for an hour, so no worker gets a next event within the test: a worker that outlived
    the import would still be there when the generous deadline below runs out."""
    sim.set_faults(Faults(hang_rate=1.0, hang_s=3600, only_kinds=("messages",)))
    sim.reset_stats()
    process = subprocess.Popen(
        [sys.executable, "-m", "waha_pipeline.cli.main", "import", "demo", "--days", "0", "--chunk-size", "10"],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2 and process.poll() is None:
            time.sleep(0.2)
            workers = grandchildren(process.pid)
        assert len(workers) == 2, f"expected two workers below the import's fork server, found {workers}"
        while time.monotonic() < deadline and sim.stats()["faults"]["hang"] < 2 and process.poll() is None:
            time.sleep(0.05)  # polling the worker processes' progress, as seen by the simulator
        assert sim.stats()["faults"]["hang"] >= 2, "the workers never reached WAHA's message pages"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if running(pid)], "worker processes outlived the import"


def test_workers_split_the_waha_concurrency(env, sim, capsys, monkeypatch) -> None:
    """WAHA_CONCURRENCY bounds the requests of the whole import, not of each worker."""
    monkeypatch.setenv("WAHA_CONCURRENCY", "4")
    sim.reset_stats()
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10")
    assert code == 0, out + err
    assert 3 <= sim.stats()["max_in_flight"] <= 4  # two workers of 2 each, both busy
    assert_matches(snapshot(env["DATABASE_URL"]), expected(sim, env["DATABASE_URL"]))


def test_workers_failing_outside_any_chunk_fail_the_step_with_their_reason(env, tmp_path) -> None:
    """E.g. the CRM refuses every worker: the step fails (and is retried) with the database's reason, no secret."""
    url = sa.make_url(env["DATABASE_URL"]).set(database="waha_no_such_db", password="s3cret-pw")
    spec = RunnerSpec(
        database_url=url.render_as_string(hide_password=False), crm_commit_timeouts=(60.0, 300.0),
        stage_root=str(tmp_path), waha_base_url=env["WAHA_BASE_URL"], waha_api_key="k3y-secret", waha_concurrency=2,
        waha_max_response_bytes=1 << 26, page_size=100, fetch_deadline_seconds=30, prefetch=1, max_chunk_bytes=1 << 30,
    )
    store = CrmStore.from_url(env["DATABASE_URL"])
    try:
        with pytest.raises(ChunkWorkerError, match='database "waha_no_such_db" does not exist') as failed:
            list(run_in_workers(spec, store, ["demo.c0000", "demo.c0001"], set(STAGES), workers=2))
    finally:
        store.dispose()
    assert "s3cret-pw" not in str(failed.value) and "k3y-secret" not in str(failed.value)
    assert "s3cret-pw" not in repr(spec)
