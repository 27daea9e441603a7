"""Every chunk ends committed or failed, or stays visibly pending and is re-run: a CRM outage longer than every
retry leaves pending chunks that `rerun-failed` finishes exactly, and a second import of a channel being imported
is refused without touching the first one's chunks. Real PostgreSQL, the simulator over HTTP, the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected
from waha_pipeline_tests.e2e.recovery_support import (
    WAIT_SECONDS,
    committed,
    database_down,
    database_up,
    start_import,
    wait_until,
)

SPEC = DatasetSpec(seed=11, chats=260, target_messages=1600)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def test_crm_outage_longer_than_retries_leaves_pending_chunks_that_rerun_failed_finishes(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    sim.set_faults(Faults(latency_ms=15))  # slow enough that the outage starts between commits
    process = start_import("--chunk-size", "20")
    try:
        wait_until(committed(url), "the first chunk committed", process)
        database_down(url)
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        database_up(url)
    assert process.returncode == 1, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "rerun-failed demo" in lines[-1], err
    assert "Traceback" not in err and "Stack Trace" not in err, err
    chunks = latest_plan(url)["chunks"]
    states = {c["status"] for c in chunks}
    assert "committed" in states and "pending" in states, [c["status"] for c in chunks]
    assert all("SELECT" not in (c["last_error"] or "") for c in chunks)

    sim.clear_faults()
    code, out, err = cli(capsys, "rerun-failed", "demo")
    assert code == 0, out + err
    assert "pending" in out
    assert all(c["status"] == "committed" for c in latest_plan(url)["chunks"])
    assert_matches(snapshot(url), expected(sim, url))


def test_second_import_of_a_channel_being_imported_is_refused(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    sim.set_faults(Faults(latency_ms=100))  # the first import is far from done when the second one starts
    process = start_import("--chunk-size", "10")
    try:
        wait_until(committed(url), "the first chunk committed", process)
        plan_id = latest_plan(url)["id"]
        for command in (("import", "demo", "--days", "0"), ("rerun-failed", "demo")):
            code, out, err = cli(capsys, *command)
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2, (command, out, err)
            assert len(lines) == 1 and "being imported by waha-pipeline pid" in lines[0], (command, err)
        code, out, err = cli(capsys, "status", "demo")
        assert code == 0 and f"pid {process.pid}" in out, out + err
        assert latest_plan(url)["id"] == plan_id, "the refused import recorded a plan"
        assert process.poll() is None, "the first import ended before the second was tried; slow the simulator"
        sim.clear_faults()
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out + err
    assert latest_plan(url)["id"] == plan_id
    assert_matches(snapshot(url), expected(sim, url))
