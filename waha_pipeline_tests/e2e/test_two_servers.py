"""Two WAHA servers that both run a session named `default` (WAHA Core allows no other name) are two channels:
imported at the same time into one CRM, by two tenants or by one, each channel ends exactly as a clean import of
its own server; the shared session name is ambiguous to `status`; a server that moves keeps its channel.

Real CLI processes (each with its own WAHA_BASE_URL), two simulators over HTTP with different phones, PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline.simulator.models import SessionSpec
from waha_pipeline_tests.crm_state import assert_matches, snapshot, truth
from waha_pipeline_tests.e2e.cli_run import cli
from waha_pipeline_tests.e2e.recovery_support import WAIT_SECONDS

# Datasets whose lid_alt chats carry no name of their own: a contact whose phone chat and lid chat are named
# differently is named either way from one import to the next, whatever the channels.
SEED_A, SEED_B = 41, 44
CLEARED = ("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE", "IMPORT_WORKERS")


def spec(seed: int, tenant: str | None = None) -> DatasetSpec:
    return DatasetSpec(seed=seed, chats=70, target_messages=420,
                       sessions=(SessionSpec(name="default", tenant_id=tenant),))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str) -> dict[str, str]:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return {"DATABASE_URL": pg_url}


@pytest.fixture
def sims(anchor: int, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Two servers with different phones; the second one's session names its tenant when the test asks."""
    tenant = getattr(request, "param", None)
    with run_in_thread(spec(SEED_A), anchor=anchor) as a, run_in_thread(spec(SEED_B, tenant), anchor=anchor) as b:
        for sim in (a, b):
            sim.set_faults(Faults(latency_ms=5))  # both imports are still running while the other one commits
        yield [a, b]


def me_digits(sim: Any) -> str:
    return httpx.get(f"{sim.base_url}/api/sessions/default/me", timeout=10).json()["id"].split("@")[0]


def import_together(env: dict[str, str], runs: list[dict[str, str]]) -> None:
    """`waha-pipeline import default` once per entry of `runs` (extra environment), all started before any ends."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "waha_pipeline.cli.main", "import", "default", "--days", "0", "--chunk-size", "10"],
            env={**os.environ, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for extra in runs
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=WAIT_SECONDS))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, out + err


def channels(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select id, tenant_id, waha_session, account, waha_server, slug "
                                        "from channels order by slug")).all()
    finally:
        engine.dispose()
    return [dict(r._mapping) | {"id": str(r.id)} for r in rows]


def assert_channel_is_a_clean_import(url: str, channel: dict[str, Any], sim: Any, *, chunks_at_least: int = 2,
                                     shared: frozenset[tuple] = frozenset()) -> None:
    """The channel's rows equal its simulator's truth. A contact of `shared` (phone, lid) is a person both servers of
    one tenant talk to: the tenant has one contact and one name for them, so only its identity is compared."""
    store = CrmStore.from_url(url)
    try:
        plan = store.latest_plan(channel["id"])
        chunks = store.plan_chunks(plan.id)
    finally:
        store.dispose()
    assert len(chunks) >= chunks_at_least and all(c.chunk_key.startswith(f"{channel['slug']}.c") for c in chunks)
    assert all(c.status == "committed" for c in chunks)
    expected = expected_of(sim, plan)
    assert expected["messages"], "the dataset must give the channel messages"
    state = snapshot(url, channel["id"])
    for rows in (state, expected):
        rows["contacts"] = {(p, lid, g, None if (p, lid) in shared else name) for p, lid, g, name in rows["contacts"]}
    assert_matches(state, expected)


def expected_of(sim: Any, plan: Any) -> dict[str, Any]:
    return truth(sim.base_url, "default", window_start=plan.window_start, window_end=plan.window_end,
                 plan_time=plan.plan_time, timeout_minutes=plan.session_timeout_minutes)


def shared_contacts(url: str, rows: list[dict[str, Any]], sims: list[Any]) -> frozenset[tuple]:
    """(phone, lid) of the contacts both channels' truths hold."""
    store = CrmStore.from_url(url)
    try:
        truths = [expected_of(sim, store.latest_plan(row["id"])) for row, sim in zip(rows, sims)]
    finally:
        store.dispose()
    first, second = ({(p, lid) for p, lid, _, _ in t["contacts"]} for t in truths)
    return frozenset(first & second)


def by_account(rows: list[dict[str, Any]], sims: list[Any]) -> list[dict[str, Any]]:
    """The channel of each simulator, in the simulators' order."""
    return [next(r for r in rows if r["account"] == me_digits(sim)) for sim in sims]


@pytest.mark.parametrize("sims", ["beta"], indirect=True, ids=["tenant-from-session-metadata"])
def test_two_tenants_import_their_default_sessions_at_the_same_time(env, sims, tmp_path, capsys) -> None:
    url = env["DATABASE_URL"]
    a, b = sims
    assert me_digits(a) != me_digits(b)
    import_together(env, [
        {"WAHA_BASE_URL": a.base_url, "WAHA_TENANT_ID": "alpha", "DAGSTER_HOME": str(tmp_path / "home-a")},
        {"WAHA_BASE_URL": b.base_url, "DAGSTER_HOME": str(tmp_path / "home-b")},
    ])
    rows = channels(url)
    assert len(rows) == 2
    first, second = by_account(rows, sims)
    assert (first["tenant_id"], second["tenant_id"]) == ("alpha", "beta")
    for row, sim in ((first, a), (second, b)):
        assert row["slug"] == channel_slug("default", row["account"]) and row["waha_server"] == sim.base_url
        assert_channel_is_a_clean_import(url, row, sim)

    os.environ["DAGSTER_HOME"] = str(tmp_path / "home-a")
    code, out, err = cli(capsys, "status", "default")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, out + err
    for row in (first, second):
        assert row["slug"] in lines[0] and f"…{row['account'][-4:]}" in lines[0] and row["waha_server"] in lines[0]
    assert "slug" in lines[0]
    code, out, err = cli(capsys, "status", first["slug"])
    assert code == 0 and f"{first['slug']}.c0000" in out and second["slug"] not in out, out + err
    code, out, err = cli(capsys, "rerun-failed", "default")
    assert code == 2 and "ambiguous" in err, out + err
    code, out, err = cli(capsys, "rerun-failed", second["slug"])
    assert code == 0 and "no failed or pending chunks" in out, out + err


def test_one_tenant_with_two_servers_then_a_server_moves(env, sims, anchor, tmp_path, monkeypatch, capsys) -> None:
    """Same tenant, one Dagster home: two channels; the first server then answers on another port (same data,
    same phone) and an import from there changes no row of either channel."""
    url = env["DATABASE_URL"]
    a, b = sims
    import_together(env, [{"WAHA_BASE_URL": sim.base_url} for sim in sims])
    rows = channels(url)
    assert len(rows) == 2 and {r["tenant_id"] for r in rows} == {"default"}
    first, second = by_account(rows, sims)
    shared = shared_contacts(url, [first, second], sims)
    assert len(shared) <= 1, "the datasets should share at most the one person every seed has"
    for row, sim in ((first, a), (second, b)):
        assert_channel_is_a_clean_import(url, row, sim, shared=shared)

    before = snapshot(url)
    with run_in_thread(spec(SEED_A), anchor=anchor) as moved:
        assert moved.base_url != a.base_url and me_digits(moved) == me_digits(a)
        monkeypatch.setenv("WAHA_BASE_URL", moved.base_url)
        code, out, err = cli(capsys, "import", "default", "--days", "0", "--chunk-size", "10")
        assert code == 0, out + err
        assert first["slug"] in out
        after = channels(url)
        assert [(r["id"], r["slug"], r["account"]) for r in after] == [(r["id"], r["slug"], r["account"]) for r in rows]
        assert next(r for r in after if r["id"] == first["id"])["waha_server"] == moved.base_url
        assert next(r for r in after if r["id"] == second["id"])["waha_server"] == b.base_url
        assert snapshot(url) == before, "an import from the moved server changed rows"
        assert_channel_is_a_clean_import(url, first, moved, chunks_at_least=1, shared=shared)
        # the moved server's session is the first channel's, not the second's
        code, out, err = cli(capsys, "import", second["slug"], "--days", "0")
        assert code == 2 and "…" + first["account"][-4:] in err and "WAHA_BASE_URL" in err, out + err
