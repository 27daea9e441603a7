"""Shared fixtures: throwaway PostgreSQL databases, the simulator over real HTTP, and the CLI environment."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from waha_pipeline.settings import parse_database_url

PG_ADMIN_URL = os.environ.get("WAHA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def temporary_pg_database(prefix: str = "waha_test") -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards even if connections linger."""
    admin_url = parse_database_url(PG_ADMIN_URL)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with temporary_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def anchor() -> int:
    """The simulated "now": fixed per test session so datasets are reproducible within it."""
    return int(time.time()) - 60


@pytest.fixture(scope="session")
def small_sim(anchor: int) -> Iterator[object]:
    """A few hundred chats of every kind: big enough for several chunks, small enough for many imports."""
    from waha_pipeline.simulator.models import DatasetSpec
    from waha_pipeline.simulator.server import run_in_thread

    with run_in_thread(DatasetSpec(seed=11, chats=260, target_messages=1600), anchor=anchor) as sim:
        yield sim


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, small_sim: object) -> dict[str, str]:
    env = {
        "WAHA_BASE_URL": small_sim.base_url,  # type: ignore[attr-defined]
        "DATABASE_URL": pg_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    for name in ("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
