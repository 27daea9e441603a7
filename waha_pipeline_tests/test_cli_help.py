"""`--help` names each option's default, the environment a command reads with the defaults settings.py holds,
and the exit codes; `--version` is the installed package's; the demo's closing hint runs as printed."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from waha_pipeline.cli.main import ENVIRONMENT, env_defaults, main, ui_command
from waha_pipeline.settings import DEFAULT_DAGSTER_HOME, DEFAULT_DATABASE_URL, Settings

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def readme_variables() -> list[str]:
    """The variables of README's configuration table (its first column), in order."""
    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z][A-Z_]+)`", row.split("|")[1])]


def test_the_help_lists_every_variable_of_the_readme_table() -> None:
    assert [name for name, _ in ENVIRONMENT] == readme_variables()


def test_the_defaults_shown_are_the_ones_settings_applies() -> None:
    applied = Settings.from_env({})
    shown = env_defaults()
    assert shown["DATABASE_URL"] == DEFAULT_DATABASE_URL and shown["DAGSTER_HOME"] == DEFAULT_DAGSTER_HOME
    assert applied.dagster_home == Path(DEFAULT_DAGSTER_HOME).absolute()
    fields = {f.name for f in dataclasses.fields(Settings)}
    for name, attr in (("WAHA_CONCURRENCY", "waha_concurrency"), ("WAHA_PAGE_SIZE", "waha_page_size"),
                       ("IMPORT_WORKERS", "import_workers"), ("IMPORT_CHUNK_MAX_MB", "chunk_max_mb"),
                       ("WAHA_MAX_RESPONSE_MB", "waha_max_response_mb"), ("WAHA_TENANT_ID", "tenant_id"),
                       ("WAHA_PLAN_DEADLINE_SECONDS", "waha_plan_deadline_seconds"),
                       ("CRM_LOCK_TIMEOUT_SECONDS", "crm_lock_timeout_seconds"),
                       ("CRM_STATEMENT_TIMEOUT_SECONDS", "crm_statement_timeout_seconds")):
        assert attr in fields
        value = getattr(applied, attr)
        assert shown[name] == (f"{value:g}" if isinstance(value, float) else str(value)), name


def test_import_help_shows_defaults_environment_and_exit_codes(capsys) -> None:
    code, out, _ = run(capsys, "import", "--help")
    assert code == 0
    assert re.search(r"--days DAYS\s+window in days, 0 = whole history \(default: 180\)", out), out
    flat = " ".join(out.split())  # argparse wraps option help to the terminal's width
    assert "chats per chunk, 1..500 (default: 50)" in flat
    assert "(default: the channel's own setting, else 30)" in flat
    defaults = env_defaults()
    for name, _ in ENVIRONMENT:
        assert re.search(rf"^  {name} .*\[{re.escape(defaults[name])}\]$", out, re.M), name
    for exit_code in (0, 1, 2):
        assert re.search(rf"^  {exit_code}  \S", out, re.M), exit_code


def test_status_help_names_what_status_reads(capsys) -> None:
    code, out, _ = run(capsys, "status", "--help")
    assert code == 0 and "--json" in out and "DATABASE_URL" in out and "WAHA_BASE_URL" not in out


def test_version_is_the_installed_package(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"waha-pipeline {version('waha-pipeline')}"


def test_the_demo_hint_runs_from_the_repository_root_without_the_venv_on_path() -> None:
    """README's quick start runs `.venv/bin/waha-pipeline demo` from the repository root: the hint names the
    dagster script by its path and a workspace file that is there."""
    hint = ui_command(Path("/tmp/home dir"), executable=sys.executable, cwd=ROOT)
    words = shlex.split(hint)
    assert words[0] == "DAGSTER_HOME=/tmp/home dir"
    program = Path(words[1]) if Path(words[1]).is_absolute() else ROOT / words[1]
    assert "/" in words[1], "a path, not a PATH lookup"
    assert program.is_file() and os.access(program, os.X_OK), program
    assert words[2:] == ["dev", "-w", "workspace.yaml"] and (ROOT / words[4]).is_file()
    assert "module_name: waha_pipeline.definitions" in (ROOT / words[4]).read_text()


def test_the_demo_hint_elsewhere_names_the_module(tmp_path: Path) -> None:
    hint = shlex.split(ui_command(tmp_path / "home", executable=sys.executable, cwd=tmp_path))
    assert Path(hint[1]).is_absolute() and Path(hint[1]).is_file()
    assert hint[2:] == ["dev", "-m", "waha_pipeline.definitions"]


def test_without_a_dagster_script_the_hint_runs_the_module(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.touch()
    hint = shlex.split(ui_command(tmp_path / "home", executable=str(python), cwd=tmp_path))
    assert hint[1:4] == ["bin/python", "-m", "dagster"]


def test_the_demo_hints_program_and_workspace_load_the_code_location_without_the_venv_on_path(tmp_path) -> None:
    """`dev` serves until stopped; `definitions validate` loads the same program, workspace and DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    words = shlex.split(ui_command(home, executable=sys.executable, cwd=ROOT))
    assignment, program, dev, *where = words
    assert dev == "dev"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), assignment.partition("=")[0]: assignment.partition("=")[2]}
    done = subprocess.run([program, "definitions", "validate", *where], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Validation successful for code location waha_pipeline" in done.stdout + done.stderr
