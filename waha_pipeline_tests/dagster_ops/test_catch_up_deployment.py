"""Catch-up end to end, against a real dagster-webserver + dagster-daemon on the root dagster.yaml (PostgreSQL
storage), the simulator over HTTP and a PostgreSQL CRM. Nobody launches anything: the session sensor imports the
channel when it connects and then keeps it in step on the cadence the deployment's environment gives
(WAHA_CATCHUP_MINUTES, here 0.1 so the test does not wait a quarter of an hour; deep every 0.02 h).

Pins, in one scenario (the phases share the deployment):
1. the connected channel is imported whole;
2. a catch-up of the unchanged channel plans again and changes no CRM row (a digest of every row, timestamps
   included);
3. new messages and new chats added to WAHA reach the CRM within a cadence, exactly as a clean import has them;
4. history WAHA syncs late inside already imported spans arrives with the next deep pass, exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from waha_pipeline.simulator.dataset import DatasetSpec, SessionSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline_tests.conftest import temporary_pg_database
from waha_pipeline_tests.crm_state import snapshot, truth
from waha_pipeline_tests.dagster_ops.stack import Stack, dagster_stack, wait_for

CADENCE_MINUTES = 0.1
DEEP_HOURS = 0.02
# A cadence, the sensor's interval and a plan run plus chunk runs (each a process) on a busy 2-core machine.
WITHIN_A_CADENCE_S = 150
CRM_TABLES = ("contacts", "messages", "sessions", "message_rejects", "chat_coverage")


@pytest.fixture(scope="module")
def sim(anchor: int) -> Iterator[Any]:
    spec = DatasetSpec(seed=23, chats=60, target_messages=300,
                       sessions=(SessionSpec(name="demo", chats=60, target_messages=300),))
    with run_in_thread(spec, anchor=anchor) as handle:
        yield handle


@pytest.fixture(scope="module")
def deployment(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    tmp: Path = tmp_path_factory.mktemp("catch_up")
    with temporary_pg_database("waha_dagster") as dagster_url, temporary_pg_database("waha_crm") as crm_url:
        env: dict[str, str | None] = {
            "WAHA_BASE_URL": sim.base_url, "DATABASE_URL": crm_url,
            "WAHA_CATCHUP_MINUTES": str(CADENCE_MINUTES), "WAHA_CATCHUP_DEEP_HOURS": str(DEEP_HOURS),
        }
        env.update(dict.fromkeys(("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE")))
        pg2 = dagster_url.replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)
        with dagster_stack(tmp, pg2, env) as stack:
            yield stack, crm_url


def plans(crm_url: str) -> list[dict[str, Any]]:
    """Every plan, oldest first, with its chunk statuses."""
    engine = sa.create_engine(crm_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "select p.id, p.plan_time, p.window_start, p.window_end, p.session_timeout_minutes, p.all_chats, "
                "coalesce(array_agg(c.status) filter (where c.status is not null), '{}') as statuses "
                "from import_plans p left join import_chunks c on c.plan_id = p.id "
                "group by p.id order by p.plan_time")).all()
    except sa.exc.ProgrammingError:  # before the first import has migrated the CRM
        return []
    finally:
        engine.dispose()
    return [{"id": str(r.id), "plan_time": int(r.plan_time.timestamp()), "window_start": r.window_start,
             "window_end": int(r.window_end.timestamp()), "timeout": r.session_timeout_minutes,
             "all_chats": r.all_chats, "done": all(s == "committed" for s in r.statuses)} for r in rows]


def expected(sim: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What imports over these plans hold: the truth from the first plan's window start to the latest plan."""
    first, last = history[0], history[-1]
    start = None if first["window_start"] is None else int(first["window_start"].timestamp())
    return truth(sim.base_url, "demo", window_start=start, window_end=last["window_end"],
                 plan_time=last["plan_time"], timeout_minutes=last["timeout"])


def exact(sim: Any, crm_url: str) -> list[dict[str, Any]] | None:
    """The plans, once the latest is done and the CRM holds exactly what its window's truth says."""
    history = plans(crm_url)
    if not history or not history[-1]["done"]:
        return None
    state, want = snapshot(crm_url), expected(sim, history)
    same = all(state[t] == want[t] for t in ("messages", "contacts", "sessions", "rejects"))
    return history if same else None


def digest(crm_url: str) -> dict[str, str]:
    """Every row of the CRM tables, every column, as one md5 per table."""
    engine = sa.create_engine(crm_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(
                f"select coalesce(md5(string_agg(r::text, ',' order by r::text)), '') from {t} r")).scalar_one()
                for t in CRM_TABLES}
    finally:
        engine.dispose()


def test_the_sensor_keeps_a_channel_in_step_with_no_action_by_anyone(sim: Any, deployment: tuple[Stack, str]) -> None:
    stack, crm_url = deployment

    # 1. the session is WORKING: the sensor imports the channel
    first = wait_for("the connect import, exact", lambda: exact(sim, crm_url), timeout=180, interval=2)
    assert len(first) == 1 and first[0]["done"]

    # 2. an unchanged channel: the next catch-up plans again and changes no row
    before = digest(crm_url)
    def caught_up_again() -> list[dict[str, Any]] | None:
        history = plans(crm_url)
        return history if len(history) > len(first) and history[-1]["done"] else None

    later = wait_for("a catch-up of the unchanged channel", caught_up_again, timeout=WITHIN_A_CADENCE_S, interval=2)
    assert not later[-1]["all_chats"]
    assert digest(crm_url) == before
    catchups = [r for r in stack.runs() if r["tags"].get("waha_pipeline/trigger") == "catchup"]
    assert catchups and all(r["status"] == "SUCCESS" for r in catchups if r["status"] in ("SUCCESS", "FAILURE"))

    # 3. WAHA gains new messages in existing chats and new chats: the CRM follows within a cadence
    grown = sim.grow("demo", new_messages=12, new_chats=2, seed=1)
    assert grown["rejects"] == 0
    def grown_in_crm() -> list[dict[str, Any]] | None:
        history = exact(sim, crm_url)
        return history if history and history[-1]["plan_time"] >= grown["at"] else None

    wait_for("new messages and chats in the CRM", grown_in_crm, timeout=WITHIN_A_CADENCE_S, interval=2)

    # 4. history synced late inside imported spans: the next deep pass brings it in
    late = sim.grow("demo", late_messages=5, seed=2)
    assert late["late_messages"] == 5
    def late_in_crm() -> list[dict[str, Any]] | None:
        history = exact(sim, crm_url)
        deep_after = history and any(p["all_chats"] and p["plan_time"] >= late["at"] for p in history)
        return history if deep_after else None

    wait_for("late history in the CRM after a deep pass", late_in_crm,
             timeout=DEEP_HOURS * 3600 + WITHIN_A_CADENCE_S, interval=3)
