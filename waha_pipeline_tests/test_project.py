"""The project's own wiring: CI runs the README's test command, and the Dagster definitions load."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("    python3 -m venv")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo.endswith("waha-pipeline demo")
    assert "pytest" in tests
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(  # from an empty directory: the root dagster.yaml is the deployable (PostgreSQL) one
        [str(dagster), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"(?i)validation successful|loaded successfully", done.stdout + done.stderr)


def test_definitions_expose_the_contract_assets() -> None:
    from waha_pipeline.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"channel_plan", "raw_chat_list", "fetched_messages", "resolved_contacts", "session_batch",
                    "committed_rows"}
    defs.resolve_job_def("chunk_import_job")
    defs.resolve_job_def("channel_plan_job")


def test_root_dagster_yaml_is_a_working_postgres_instance(tmp_path: Path, pg_url: str, monkeypatch) -> None:
    import dagster as dg
    from sqlalchemy.engine import make_url

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", make_url(pg_url).set(drivername="postgresql+psycopg2").render_as_string(False))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        limits = {limit["key"] for limit in instance.get_concurrency_config().run_queue_config.tag_concurrency_limits}
        assert "waha_pipeline/channel" in limits
