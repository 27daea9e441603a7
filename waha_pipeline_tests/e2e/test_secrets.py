"""The WAHA API key never appears in output, logs, the CRM ledger or the Dagster event log, even when requests
fail and errors are recorded; a wrong key is a configuration error (exit 2) found before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from waha_pipeline.cli.main import main
from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread

KEY = "wk-5ecret-0f-the-test-9d1c"


def test_api_key_stays_secret(anchor, pg_url, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    spec = DatasetSpec(seed=5, chats=120, target_messages=600)
    with run_in_thread(spec, anchor=anchor, api_key=KEY, faults=Faults(error_rate=0.3, html_error_rate=0.5)) as sim:
        monkeypatch.setenv("WAHA_BASE_URL", sim.base_url)
        monkeypatch.setenv("DATABASE_URL", pg_url)
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("WAHA_TENANT_ID", raising=False)

        monkeypatch.setenv("WAHA_API_KEY", "not-the-key")
        code = main(["import", "demo"])
        out, err = capsys.readouterr()
        assert code == 2 and "WAHA_API_KEY" in err and "not-the-key" not in out + err

        monkeypatch.setenv("WAHA_API_KEY", KEY)
        sim.set_faults(Faults(error_rate=1.0, only_kinds=("messages",)))  # failures get logged and recorded
        assert main(["import", "demo"]) == 1
        sim.clear_faults()
        assert main(["rerun-failed", "demo"]) == 0
        out, err = capsys.readouterr()

    assert KEY not in out + err
    assert KEY not in caplog.text
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        errors = [r[0] or "" for r in conn.execute(sa.text("select last_error from import_chunks"))]
    engine.dispose()
    assert not any(KEY in e for e in errors)
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) >= 3
    events = [entry for run in runs for entry in instance.all_logs(run.run_id)]
    assert any(e.is_dagster_event and e.dagster_event.is_step_failure for e in events)
    dumped = "\n".join(repr(e) for e in events)
    assert "503" in dumped or "circuit" in dumped
    assert KEY not in dumped
    assert not any(KEY in str(run.tags) for run in runs)
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
