"""SIGTERM stops an import within a bounded wait: no new chunk starts, the chunk being committed commits or rolls
back, the rest are marked failed "interrupted", exit 1 with the advice that finishes the job, and no process or
database connection is left behind; a second signal stops it at once. `rerun-failed` then ends exact."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected
from waha_pipeline_tests.e2e.recovery_support import (
    alive,
    committed,
    connections,
    descendants,
    start_import,
    wait_until,
)

SPEC = DatasetSpec(seed=11, chats=260, target_messages=1600)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def interrupt(url: str, signals: int) -> tuple[int, str, set[int]]:
    """Start an import against the slow simulator, send `signals` SIGTERMs once a chunk committed."""
    process = start_import("--chunk-size", "10")
    try:
        wait_until(committed(url), "the first chunk committed", process)
        children = descendants(process.pid)
        for _ in range(signals):
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)  # bounded: today the import runs on for minutes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err, children


def test_sigterm_stops_the_import_marks_the_rest_interrupted_then_rerun_is_exact(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    sim.set_faults(Faults(latency_ms=100))
    code, err, children = interrupt(url, signals=1)
    assert code == 1, err
    assert children, "the import ran its chunks in worker processes"
    wait_until(lambda: not any(alive(pid) for pid in children), "the worker processes to exit")
    wait_until(lambda: connections(url) == 0, "the import's database connections to close")
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].endswith("waha-pipeline rerun-failed demo"), err
    assert "Traceback" not in err and "Stack Trace" not in err, err
    chunks = latest_plan(url)["chunks"]
    states = [c["status"] for c in chunks]
    assert "pending" not in states and "committed" in states, states
    assert any(c["status"] == "failed" and c["last_error"] == "interrupted" for c in chunks), chunks

    sim.clear_faults()
    code, out, err = cli(capsys, "rerun-failed", "demo")
    assert code == 0, out + err
    assert_matches(snapshot(url), expected(sim, url))


def test_second_sigterm_stops_at_once_then_rerun_is_exact(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    sim.set_faults(Faults(latency_ms=100))
    code, err, children = interrupt(url, signals=2)
    assert code == 1, err
    wait_until(lambda: not any(alive(pid) for pid in children), "the worker processes to exit")
    wait_until(lambda: connections(url) == 0, "the import's database connections to close")
    assert any(c["status"] != "committed" for c in latest_plan(url)["chunks"])

    sim.clear_faults()
    code, out, err = cli(capsys, "rerun-failed", "demo")
    assert code == 0, out + err
    assert all(c["status"] == "committed" for c in latest_plan(url)["chunks"])
    assert_matches(snapshot(url), expected(sim, url))
