"""Helpers of the recovery and signal tests: the real CLI as a subprocess, the ledger polled, processes and
database connections counted, the test database taken away and given back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from waha_pipeline_tests.conftest import PG_ADMIN_URL
from waha_pipeline_tests.crm_state import latest_plan
from waha_pipeline.settings import parse_database_url

WAIT_SECONDS = 180.0


def start_import(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "waha_pipeline.cli.main", "import", "demo", "--days", "0", *args],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def chunks_or_none(url: str) -> list[dict[str, Any]]:
    try:
        return latest_plan(url)["chunks"]
    except Exception:  # noqa: BLE001 - the schema or the plan may not exist yet
        return []


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[str] | None = None) -> None:
    """Poll `condition` (a state change of another process) until it holds; fail after a generous bound."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the import exited ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def committed(url: str, at_least: int = 1) -> Callable[[], bool]:
    return lambda: sum(c["status"] == "committed" for c in chunks_or_none(url)) >= at_least


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the fork server and the chunk workers it forked), from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def admin_engine() -> sa.Engine:
    return sa.create_engine(parse_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")


def connections(url: str) -> int:
    """Connections to the test database other than the admin's own."""
    name = make_url(url).database
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(
                "select count(*) from pg_stat_activity where datname = :db and pid <> pg_backend_pid()"
            ), {"db": name}).scalar_one())
    finally:
        engine.dispose()


def database_down(url: str) -> None:
    """An outage of the CRM database: no new connection is accepted and every open one is dropped."""
    name = make_url(url).database
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = :db"
            ), {"db": name})
    finally:
        engine.dispose()


def database_up(url: str) -> None:
    name = make_url(url).database
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        engine.dispose()
