"""The CLI environment of the end-to-end modules: their own simulator, a fresh database and Dagster home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CLEARED = ("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE", "IMPORT_WORKERS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, sim: Any) -> dict[str, str]:
    """`sim` is the requesting module's own simulator fixture."""
    values = {"WAHA_BASE_URL": sim.base_url, "DATABASE_URL": pg_url, "DAGSTER_HOME": str(tmp_path / "home")}
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
