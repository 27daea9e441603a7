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

Then, on the same deployment: the sensor page shows the catch-up ticks and their runs; a session count changed
behind the importer's back in one committed chunk fails that chunk's `sessions_match_messages` check in a checks-only
run recorded in the deployment's instance, while the other chunk's checks pass, and the asset's Checks tab shows it
(docs/images, written only with WAHA_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from waha_pipeline.crm.schema import messages, sessions
from waha_pipeline.definitions import build_definitions
from waha_pipeline.defs.checks import ACCOUNTED, CHECK_KEYS, CONTACTS, SESSIONS
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.simulator.models import DatasetSpec, SessionSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline_tests.conftest import temporary_pg_database
from waha_pipeline_tests.crm_state import snapshot, truth
from waha_pipeline_tests.dagster_ops.stack import CHROMIUM, ROOT, Stack, dagster_stack, screenshot, wait_for

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


# ---------------------------------------------------------------- THE CHUNK CHECKS AND THE SENSOR IN THE UI

SENSOR = "waha_session_sensor"
# The docs' images; written only when asked (WAHA_UPDATE_SCREENSHOT=1), so runs leave the tree clean.
CHECKS_SCREENSHOT = ROOT / "docs" / "images" / "chunk_checks.png"
SENSOR_SCREENSHOT = ROOT / "docs" / "images" / "catch_up_sensor.png"
ACTIVE_RUN_STATUSES = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING", "MANAGED"}

SENSOR_STATE = """
query SensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { id status ticks(limit: 1) { status } } }
    ... on PythonError { message }
  }
}"""

STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""

# What the UI's check partition detail reads: the executions of one check on one partition, newest first.
CHECK_EXECUTIONS = """
query CheckExecutions($assetKey: AssetKeyInput!, $checkName: String!, $partition: String!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, partition: $partition, limit: 1) {
    runId status
    evaluation { success metadataEntries { label ... on JsonMetadataEntry { jsonString } } }
  }
}"""


def sensor_state(stack: Stack) -> dict[str, Any]:
    selector = {"repositoryLocationName": "waha_pipeline", "repositoryName": "__repository__", "sensorName": SENSOR}
    sensor = stack.graphql(SENSOR_STATE, selector=selector)["sensorOrError"]
    assert "sensorState" in sensor, sensor
    return sensor["sensorState"]


def stop_sensor_and_settle(stack: Stack) -> None:
    """Stop the session sensor and wait for what it started to end: its deep passes re-plan every chunk (every
    WAHA_CATCHUP_DEEP_HOURS), and a re-imported chunk would be checked anew, hiding the corruption from the UI."""
    result = stack.graphql(STOP_SENSOR, id=sensor_state(stack)["id"])["stopSensor"]
    assert result["__typename"] == "StopSensorMutationResult", result
    assert result["instigationState"]["status"] == "STOPPED", result

    def settled() -> bool:
        ticks = sensor_state(stack)["ticks"]
        if ticks and ticks[0]["status"] == "STARTED":  # a tick in flight may still submit a run
            return False
        return not any(r["status"] in ACTIVE_RUN_STATUSES for r in stack.runs())

    wait_for("the stopped sensor's runs to end", settled, timeout=WITHIN_A_CADENCE_S, interval=2)


def unfinished_chunks(crm_url: str) -> list[str]:
    """The chunk keys of the latest plan that are not committed (the sensor launches them after the plan run)."""
    engine = sa.create_engine(crm_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "select chunk_key from import_chunks where status <> 'committed' and plan_id = "
                "(select id from import_plans order by plan_time desc, created_at desc limit 1) "
                "order by chunk_index")).scalars())
    finally:
        engine.dispose()


def import_chunk(sim: Any, crm_url: str, chunk_key: str) -> None:
    """Import one chunk of the latest plan as a sensor's chunk run would, in the instance of DAGSTER_HOME."""
    defs = build_definitions(WahaResource(base_url=sim.base_url), CrmResource(database_url=crm_url))
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("chunk_import_job").execute_in_process(
            instance=instance, partition_key=chunk_key, raise_on_error=False)
    assert result.success, chunk_key


def committed_chunks(crm_url: str) -> list[tuple[str, list[str]]]:
    """(key, chat ids) of each chunk key committed in the latest plan that has it (what its checks judge)."""
    engine = sa.create_engine(crm_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "select distinct on (c.chunk_key) c.chunk_key, c.chunk_index, c.chat_ids, c.status "
                "from import_chunks c join import_plans p on p.id = c.plan_id "
                "order by c.chunk_key, p.plan_time desc, p.created_at desc")).all()
    finally:
        engine.dispose()
    return [(r.chunk_key, list(r.chat_ids)) for r in sorted(rows, key=lambda r: r.chunk_index)
            if r.status == "committed"]


def corrupt_a_session_count(crm_url: str, chat_ids: list[str]) -> str | None:
    """Add one to the message count of a session of a contact with several messages in these chats, behind the
    importer's back; the session's id, or None when the chats have no such contact."""
    engine = sa.create_engine(crm_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            contact = conn.execute(
                sa.select(messages.c.contact_id).where(messages.c.chat_id.in_(chat_ids))
                .group_by(messages.c.contact_id).having(sa.func.count() > 1).order_by(messages.c.contact_id).limit(1)
            ).scalar_one_or_none()
            if contact is None:
                return None
            session_id = conn.execute(
                sa.select(sessions.c.id).where(sessions.c.contact_id == contact).order_by(sessions.c.id).limit(1)
            ).scalar_one()
            conn.execute(sa.update(sessions).where(sessions.c.id == session_id)
                         .values(message_count=sessions.c.message_count + 1))
    finally:
        engine.dispose()
    return str(session_id)


def execute_checks(sim: Any, crm_url: str, chunk_key: str) -> str:
    """What the UI's "Execute checks" runs, recorded in the instance of DAGSTER_HOME: the chunk step with only the
    checks selected, importing nothing. Returns the run's id."""
    base = build_definitions(WahaResource(base_url=sim.base_url), CrmResource(database_url=crm_url))
    job = dg.define_asset_job("chunk_checks", selection=dg.AssetSelection.checks(*CHECK_KEYS))
    defs = dg.Definitions(assets=base.assets, jobs=[job], resources=base.resources)
    with dg.DagsterInstance.get() as instance:
        # a run's partition is its tag (the UI's launch sets it so); `partition_key=` wants a selected asset
        result = defs.resolve_job_def("chunk_checks").execute_in_process(
            instance=instance, tags={"dagster/partition": chunk_key}, raise_on_error=False)
    assert result.success, chunk_key  # a failed check is a result, not a failed run
    return result.run_id


def check_outcomes(stack: Stack, chunk_key: str) -> dict[str, dict[str, Any]]:
    """check name -> its latest execution on the chunk partition, as the webserver serves it."""
    out = {}
    for key in CHECK_KEYS:
        executions = stack.graphql(CHECK_EXECUTIONS, assetKey={"path": list(key.asset_key.path)},
                                   checkName=key.name, partition=chunk_key)["assetCheckExecutions"]
        assert executions, (chunk_key, key.name)
        out[key.name] = executions[0]
    return out


def test_a_row_changed_behind_the_importer_fails_its_chunk_check_in_the_ui(
    sim: Any, deployment: tuple[Stack, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the scenario above (or alone: it waits for the import and a catch-up), on the same deployment."""
    stack, crm_url = deployment
    update = os.environ.get("WAHA_UPDATE_SCREENSHOT") == "1"
    wait_for("the connect import, exact", lambda: exact(sim, crm_url), timeout=180, interval=2)
    wait_for("a catch-up done", lambda: len(history := plans(crm_url)) > 1 and history[-1]["done"],
             timeout=WITHIN_A_CADENCE_S, interval=2)

    # 1. the sensor page while the sensor keeps the channel in step: its ticks and the runs they launched
    def sensor_ready(page: Any) -> None:
        page.get_by_text(SENSOR).first.wait_for(timeout=30_000)
        page.get_by_text("run requested").first.wait_for(timeout=30_000)

    text = screenshot(f"{stack.url}/locations/waha_pipeline/sensors/{SENSOR}", sensor_ready,
                      SENSOR_SCREENSHOT if update else tmp_path / "catch_up_sensor.png")
    if text is None:
        warnings.warn(f"Playwright or {CHROMIUM} missing: the UI screenshots were not checked", stacklevel=1)
    else:
        assert "channel_plan_job" in text and "chunk_import_job" in text, text[:2000]
        assert '"trigger": "catchup"' in text or '"trigger": "deep"' in text, text[:2000]  # the cursor shown

    # 2. no import may re-check the chunks from here on: the sensor stops; a plan it made just before stopping
    #    gets its chunks imported as its next tick would have, so every chunk is committed in its latest plan
    monkeypatch.setenv("DAGSTER_HOME", str(stack.home))
    monkeypatch.setenv("DAGSTER_PG_URL", stack.env["DAGSTER_PG_URL"])
    stop_sensor_and_settle(stack)
    for key in unfinished_chunks(crm_url):
        import_chunk(sim, crm_url, key)
    assert exact(sim, crm_url), "the CRM after the last plan"

    # 3. a session count changed behind the importer's back in one of two committed chunks
    chunks = committed_chunks(crm_url)
    corrupted, session_id = next((key, sid) for key, chats in chunks
                                 if (sid := corrupt_a_session_count(crm_url, chats)) is not None)
    intact = next(key for key, _ in chunks if key != corrupted)

    # 4. the checks of both chunks, a checks-only run each, recorded in the deployment's instance
    runs = {key: execute_checks(sim, crm_url, key) for key in (corrupted, intact)}
    for key, run_id in runs.items():
        outcomes = check_outcomes(stack, key)
        assert {o["runId"] for o in outcomes.values()} == {run_id}, key
        statuses = {name: o["status"] for name, o in outcomes.items()}
        if key == intact:
            assert statuses == dict.fromkeys((ACCOUNTED, SESSIONS, CONTACTS), "SUCCEEDED"), (key, outcomes)
        else:
            assert statuses == {ACCOUNTED: "SUCCEEDED", SESSIONS: "FAILED", CONTACTS: "SUCCEEDED"}, (key, outcomes)
            offenders = [e["jsonString"] for e in outcomes[SESSIONS]["evaluation"]["metadataEntries"]
                         if e["label"] == "offenders"]
            assert offenders and session_id in offenders[0], outcomes[SESSIONS]

    # 5. the Checks tab of committed_rows: the failed check on the corrupted chunk, the passing ones
    def checks_ready(page: Any) -> None:
        page.get_by_text(SESSIONS).first.wait_for(timeout=30_000)
        # the check's own Partitions tab (a button; the asset's Partitions tab above it is a link)
        page.locator("button[role=tab]", has_text="Partitions").click()
        page.get_by_text(corrupted, exact=True).filter(visible=True).first.click()
        page.get_by_text("session(s) not what their messages give").wait_for(timeout=30_000)

    text = screenshot(f"{stack.url}/assets/committed_rows?view=checks&checkDetail={SESSIONS}", checks_ready,
                      CHECKS_SCREENSHOT if update else tmp_path / "chunk_checks.png")
    if text is not None:
        assert all(name in text for name in (ACCOUNTED, SESSIONS, CONTACTS)), text[:2000]
        assert "Failed (1)" in text and "Passed (" in text and corrupted in text and intact in text, text[:2000]
        assert "sessions_wrong" in text, text[:2000]
