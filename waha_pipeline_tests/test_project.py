"""The project's own wiring: CI runs the README's test command, and the Dagster definitions load."""

from __future__ import annotations

import re
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


def test_dagster_definitions_validate() -> None:
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "waha_pipeline.definitions"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
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
