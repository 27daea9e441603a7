"""Each WAHA engine profile of the simulator, imported end to end (PostgreSQL, HTTP, Dagster), equals its truth.

The profiles serve what GOWS, NOWEB and WEBJS really send (simulator/engines.py names the sources): their own
`_data` shapes and time fields, rows dropped after slicing (empty pages before the chat's end), WEBJS newest-first
pages without `timestamp` when a lower bound is sent, thumbnails in bodies, system notices and protocol rows,
phones inside messages of lid chats. The import must equal the truth exactly, count every non-message row it
was served by reason, and a second import must change nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from waha_pipeline.simulator.models import DatasetSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PROFILES = {
    "noweb": {"engine": "noweb"},
    "noweb-2024": {"engine": "noweb", "legacy": True},
    "webjs": {"engine": "webjs"},
    "webjs-2024": {"engine": "webjs", "legacy": True},
}
NOT_MESSAGES = ("reaction", "poll_vote", "event_response", "protocol", "system_notice")


@pytest.fixture(params=list(PROFILES), scope="module")
def sim(request: pytest.FixtureRequest, anchor: int) -> Iterator[Any]:
    spec = DatasetSpec(seed=23, chats=200, target_messages=1400, **PROFILES[request.param])
    with run_in_thread(spec, anchor=anchor) as handle:
        yield handle


def ledger_skipped(url: str, plan_id: str) -> Counter[str]:
    """The plan's skipped rows by reason, summed over its chunks (every committed chunk records them)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select skipped from import_chunks where plan_id = :p"), {"p": plan_id}).all()
    finally:
        engine.dispose()
    total: Counter[str] = Counter()
    for (skipped,) in rows:
        assert skipped is not None, "a committed chunk records its skipped rows"
        total.update(skipped)
    return total


def test_profile_imports_exactly_and_accounts_for_every_row(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    code, out, err = cli(capsys, "import", "demo")
    assert code == 0, out + err
    plan = latest_plan(url)
    first = snapshot(url)
    assert_matches(first, expected(sim, url))

    want = sim.truth("demo", window_start=plan["window_start"], window_end=plan["window_end"],
                     plan_time=plan["plan_time"])
    served = Counter({reason: n for reason, n in want["skipped_messages"].items() if n})
    skipped = ledger_skipped(url, plan["id"])
    assert Counter({reason: n for reason, n in skipped.items() if reason in NOT_MESSAGES and n}) == served
    code, out, _ = cli(capsys, "status", "demo")
    line = next((line for line in out.splitlines() if line.startswith("skipped rows: ")), "")
    assert all(f"{reason} {n}" in line for reason, n in served.items()), (line, served)

    code, out, err = cli(capsys, "import", "demo")
    assert code == 0, out + err
    second = snapshot(url)
    assert second["ids"] == first["ids"]
    assert second["message_sessions"] == first["message_sessions"]


@pytest.fixture(scope="module")
def lte_ignoring_sim(anchor: int) -> Iterator[Any]:
    """A WAHA version that ignores `filter.timestamp.lte` (simulator option; WAHA #2164)."""
    with run_in_thread(DatasetSpec(seed=29, chats=40, target_messages=200, ignore_lte=True), anchor=anchor) as handle:
        yield handle


def test_rows_stamped_after_the_plan_time_are_counted_and_hold_back_their_chats_coverage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, pg_url: str, lte_ignoring_sim: Any, anchor: int, capsys
) -> None:
    """NOWEB stamped history `fromMe` rows with the request time (WAHA #2139): such a stamp is after the plan
    time, so the row is skipped (after_plan_time) and the chat's coverage must not advance over a span whose
    times cannot be trusted; the chat's other messages are imported."""
    sim = lte_ignoring_sim
    for name, value in {"WAHA_BASE_URL": sim.base_url, "DATABASE_URL": pg_url,
                        "DAGSTER_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)
    chat = "5511977770001@c.us"
    sim.state.add_chat("demo", chat, "Cliente Futuro")
    good = {"id": f"false_{chat}_GOOD", "timestamp": anchor - 3600, "from": chat, "fromMe": False, "body": "oi"}
    late = {"id": f"true_{chat}_LATE", "timestamp": anchor + 86_400, "from": chat, "fromMe": True, "body": "ok",
            "_data": {"key": {"fromMe": True, "id": "LATE"}, "messageTimestamp": anchor + 86_400}}
    sim.state.serve_raw("demo", chat, good, order_ts=good["timestamp"])
    sim.state.serve_raw("demo", chat, late, order_ts=late["timestamp"])

    code, out, err = cli(capsys, "import", "demo")
    assert code == 0, out + err
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("select external_id from messages where chat_id = :c"), {"c": chat}).all()
            covered = conn.execute(sa.text("select count(*) from chat_coverage where chat_id = :c"),
                                   {"c": chat}).scalar_one()
            other = conn.execute(sa.text("select count(*) from chat_coverage where chat_id <> :c"),
                                 {"c": chat}).scalar_one()
    finally:
        engine.dispose()
    assert [r.external_id for r in stored] == [good["id"]]
    assert covered == 0 and other > 0
    assert ledger_skipped(pg_url, latest_plan(pg_url)["id"])["after_plan_time"] == 1



@pytest.fixture(params=[(42, 70, 400), (23, 120, 600)], scope="module")
def joined_sim(request: pytest.FixtureRequest, anchor: int) -> Iterator[Any]:
    """Datasets with lid chats whose phone only their messages give (GOWS `Info.SenderAlt`)."""
    seed, chats, messages = request.param
    with run_in_thread(DatasetSpec(seed=seed, chats=chats, target_messages=messages), anchor=anchor) as handle:
        yield handle


def test_contacts_joined_across_chunks_by_phones_in_messages_are_exact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, pg_url: str, joined_sim: Any, capsys
) -> None:
    """Small chunks put a lid chat and its phone's chat in different chunks that resolve at the same time on two
    workers: the contact (identity, name, sessions) must still be the one a clean import gives, twice over."""
    for name, value in {"WAHA_BASE_URL": joined_sim.base_url, "DATABASE_URL": pg_url,
                        "DAGSTER_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)
    joined = [c for c in joined_sim.state.dataset.sessions["demo"].chats if c.kind == "lid_alt"]
    assert joined, "the dataset must hold lid chats whose phone only messages give"
    for _ in range(2):
        code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10")
        assert code == 0, out + err
        assert_matches(snapshot(pg_url), expected(joined_sim, pg_url))
