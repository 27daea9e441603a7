"""End to end: what the CLI prints for people and for scripts (SPEC 4).

Progress lines while chunks run (plain lines when stdout is not a terminal), `import --json` and `status --json`
as one JSON document on stdout that agrees with the CRM ledger, and errors that stay one line on stderr with the
documented exit codes under --json. Real PostgreSQL, the simulator over HTTP, the CLI in process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline_tests.crm_state import latest_plan
from waha_pipeline_tests.e2e.cli_run import cli

SPEC = DatasetSpec(seed=29, chats=90, target_messages=450)
PROGRESS = re.compile(r"^progress: chunks (\d+)/(\d+)(?: \((\d+) failed\))?, ([\d,]+) messages committed, "
                      r"[\d,]+ msg/s, (?:ETA [\d:-]+|done)$")


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def ledger(url: str) -> tuple[str, list[tuple[str, str, int, int]], int]:
    """(latest plan id, its chunks as (key, status, chats, messages) by key, messages rows in the CRM)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            plan_id = str(latest_plan(url)["id"])
            chunks = conn.execute(sa.text("select chunk_key, status, chats, messages from import_chunks "
                                          "where plan_id = :p order by chunk_key"), {"p": plan_id}).all()
            stored = conn.execute(sa.text("select count(*) from messages")).scalar_one()
    finally:
        engine.dispose()
    return plan_id, [tuple(c) for c in chunks], stored


def progress_lines(out: str) -> list[tuple[int, int, int, int]]:
    """(done, total, failed, messages) of every progress line."""
    found = []
    for line in out.splitlines():
        if line.startswith("progress:"):
            m = PROGRESS.match(line)
            assert m, f"malformed progress line {line!r}"
            found.append((int(m[1]), int(m[2]), int(m[3] or 0), int(m[4].replace(",", ""))))
    return found


def test_import_prints_plain_progress_lines_from_the_ledger_when_stdout_is_no_terminal(env, sim, capsys) -> None:
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10")
    assert code == 0, out + err
    assert "\r" not in out and "\x1b[" not in out, "no in-place rewriting when stdout is not a terminal"
    lines = progress_lines(out)
    _, chunks, stored = ledger(env["DATABASE_URL"])
    total = len(chunks)
    assert total >= 5 and stored > 0, (total, stored)
    assert lines[0] == (0, total, 0, 0), lines
    assert lines[-1] == (total, total, 0, stored), lines
    assert [d for d, *_ in lines] == sorted(d for d, *_ in lines), "done never goes back"
    table = out.index("chunk ")
    assert all(out.index(f"chunks {d}/") < table for d, *_ in lines), "progress comes before the report"


def test_import_json_is_one_document_agreeing_with_the_ledger(env, sim, capsys) -> None:
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "15", "--json")
    assert code == 0, out + err
    doc = json.loads(out)  # nothing else on stdout: no progress, no table
    plan_id, chunks, stored = ledger(env["DATABASE_URL"])
    assert doc["plan"]["id"] == plan_id
    assert doc["plan"]["window_start"] is None and doc["plan"]["days"] == 0 and doc["plan"]["chunk_size"] == 15
    assert doc["channel"]["session"] == "demo" and doc["channel"]["slug"].startswith("demo-")
    assert sorted((c["key"], c["state"], c["chats"], c["messages"]) for c in doc["chunks"]) == chunks
    assert doc["totals"]["committed"] == len(chunks) and doc["totals"]["failed"] == 0
    assert doc["totals"]["messages_committed"] == stored > 0
    assert doc["exit_code"] == 0 and doc["exit_meaning"]

    code, status_out, status_err = cli(capsys, "status", doc["channel"]["slug"], "--json")
    assert code == 0, status_out + status_err
    status = json.loads(status_out)
    assert status["chunks"] == doc["chunks"] and status["totals"] == doc["totals"]
    assert status["import_in_progress"] is None and status["exit_code"] == 0


def test_import_json_with_failed_chunks_exits_1_with_the_failures_on_stderr(env, sim, capsys) -> None:
    sim.set_faults(Faults(garbage_rate=0.08, only_kinds=("messages",)))
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10", "--json")
    assert code == 1, out + err
    doc = json.loads(out)
    failed = [c for c in doc["chunks"] if c["state"] == "failed"]
    assert failed and doc["totals"]["failed"] == len(failed) and doc["exit_code"] == 1
    assert all(c["last_error"] and "not JSON" in c["last_error"] for c in failed), failed
    assert all(f"chunk {c['key']} failed" in err for c in failed), err
    assert "rerun-failed" in doc["exit_meaning"]


@pytest.mark.parametrize("argv", [("status", "nosuch", "--json"), ("import", "nosuch", "--json")])
def test_json_errors_stay_one_line_on_stderr_with_exit_2(env, sim, capsys, argv) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2, out + err
    assert out == "", "nothing on stdout"
    assert len(err.strip().splitlines()) == 1 and err.startswith("waha-pipeline: error: "), err
    if argv[0] == "import":
        assert "nosuch" in err, err
