"""waha_session_sensor, tick by tick: the daemon's part (applying partition requests, launching runs) is done by
the test, in process, so each state transition of the cursor is pinned without a webserver or daemon.

Pins: WORKING sessions are planned once, then their chunks are launched as contiguous ranged runs with the
channel/server/max_runtime tags; SCAN_QR_CODE and STOPPED sessions wait; a reconnect after a failed import
plans again, after a successful one it does not; a WAHA outage is a sensor error, not a skip. Catch-up, on a
fake clock: a channel is planned again once its latest plan is a cadence old (deep every deep interval), never
while a CLI import holds the channel, and never when the cadence is 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.definitions import build_definitions
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.instance.runs import (
    CHANNEL_TAG,
    MAX_RUNTIME_TAG,
    WAHA_SERVER_TAG,
    max_runtime_seconds,
    run_tags,
    waha_server_label,
)
from waha_pipeline.defs.sensors import REQUEST_TAG, TRIGGER_TAG
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.settings import CatchUp
from waha_pipeline.simulator.models import DatasetSpec, SessionSpec
from waha_pipeline.simulator.server import run_in_thread

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
CADENCE = CatchUp(every_seconds=15 * 60, deep_every_seconds=24 * 3600)


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

# ---------------------------------------------------------------- FIXTURES


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    spec = DatasetSpec(
        seed=5, chats=40, target_messages=240,
        sessions=(SessionSpec(name="demo", chats=40, target_messages=240),
                  SessionSpec(name="sales", status="SCAN_QR_CODE", tenant_id="acme", chats=24, target_messages=120)),
    )
    with run_in_thread(spec) as handle:
        yield handle


@pytest.fixture
def world(sim, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    for name in ("WAHA_API_KEY", "WAHA_TENANT_ID", "WAHA_CONCURRENCY", "WAHA_PAGE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WAHA_BASE_URL", sim.base_url)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    sim.set_status("demo", "WORKING")
    sim.set_status("sales", "SCAN_QR_CODE")
    resources = {"waha": WahaResource(base_url=sim.base_url),
                 "crm": CrmResource(database_url=pg_url, stage_dir=str(tmp_path / "stages"))}
    store = CrmStore.from_url(pg_url)
    clock = FakeClock()
    with dg.instance_for_test() as instance:
        yield {"defs": build_definitions(**resources, catchup=CADENCE, clock=clock), "resources": resources,
               "instance": instance, "store": store, "sim": sim, "cursor": None, "clock": clock}
    store.dispose()


def tick(world: dict) -> SensorExecutionData:
    """One sensor evaluation as the daemon's code server does it (evaluate_tick validates the run requests);
    partition requests are applied the way the daemon applies them."""
    instance: dg.DagsterInstance = world["instance"]
    with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=world["cursor"],
                                 definitions=world["defs"], resources=world["resources"]) as context:
        result = world["defs"].resolve_sensor_def("waha_session_sensor").evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    if result.cursor is not None:
        world["cursor"] = result.cursor
    return result


def launch(world: dict, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    job = world["defs"].resolve_job_def(request.job_name)
    return job.execute_in_process(instance=world["instance"], partition_key=request.partition_key,
                                  run_config=request.run_config, tags=request.tags, raise_on_error=False)


def runs_of(result: SensorExecutionData) -> list[dg.RunRequest]:
    return list(result.run_requests or [])


def skipped(result: SensorExecutionData) -> bool:
    return not result.run_requests and not result.asset_events and bool(result.skip_message)


def me_digits(sim: object, session: str) -> str:
    """The digits of the session's `me.id`, as WAHA serves them."""
    me = httpx.get(f"{sim.base_url}/api/sessions/{session}/me", timeout=10).json()  # type: ignore[attr-defined]
    return me["id"].split("@")[0]


def phases(world: dict) -> dict[str, str | None]:
    return {name: s["phase"] for name, s in json.loads(world["cursor"])["sessions"].items()}


# ---------------------------------------------------------------- TESTS


def test_run_tags_bound_runtime_by_chunks_and_retry_crashes_only() -> None:
    tags = run_tags("demo", "http://user:secret@waha.internal:3000/api", 50)
    assert tags == {
        CHANNEL_TAG: "demo",
        WAHA_SERVER_TAG: "waha.internal:3000",
        MAX_RUNTIME_TAG: str(max_runtime_seconds(50)),
        "dagster/max_retries": "1",
        "dagster/retry_on_asset_or_op_failure": "false",
    }
    assert max_runtime_seconds(50) > max_runtime_seconds(1) > max_runtime_seconds(0) > 0
    assert waha_server_label("https://waha.example.com") == "waha.example.com:443"
    assert run_tags("demo", "waha:3000", 0)[WAHA_SERVER_TAG] == "waha:3000"


def test_working_session_is_planned_then_its_chunks_run_in_ranges(world: dict) -> None:
    first = tick(world)
    [plan_request] = runs_of(first)
    channel = world["store"].find_channel("demo")
    assert channel is not None and channel.tenant_id == "default"
    # the channel is the account WAHA reports for the session: its slug carries the account's digest
    assert channel.account == me_digits(world["sim"], "demo") and channel.slug == channel_slug("demo", channel.account)
    assert channel.waha_server == world["sim"].base_url
    slug = channel.slug
    assert plan_request.job_name == "channel_plan_job" and plan_request.partition_key == slug
    assert plan_request.tags[CHANNEL_TAG] == slug
    assert plan_request.tags[WAHA_SERVER_TAG] == waha_server_label(world["sim"].base_url)
    assert world["instance"].get_dynamic_partitions("channels") == [slug]
    assert phases(world) == {"demo": "planning", "sales": None}, "SCAN_QR_CODE waits for WORKING"

    # the plan run has not happened yet: nothing new
    assert skipped(tick(world))
    assert launch(world, plan_request).success

    second = tick(world)
    chunk_requests = runs_of(second)
    plan = world["store"].latest_plan(channel.id)
    keys = [c.chunk_key for c in world["store"].plan_chunks(plan.id)]
    assert len(keys) >= 1 and world["instance"].get_dynamic_partitions("chunks") == keys
    covered = []
    for request in chunk_requests:
        start, end = request.tags[RANGE_START], request.tags[RANGE_END]
        span = keys[keys.index(start): keys.index(end) + 1]
        assert len(span) <= 50 and request.tags[MAX_RUNTIME_TAG] == str(max_runtime_seconds(len(span)))
        assert request.tags[REQUEST_TAG] == plan_request.tags[REQUEST_TAG]
        covered += span
    assert covered == keys
    [summary] = second.asset_events
    assert summary.partition == slug and summary.metadata["chunks_pending"].value == len(keys)

    # runs launched but not finished: idempotent, no second launch
    assert runs_of(tick(world)) == []
    for request in chunk_requests:
        assert launch(world, request).success
    done = tick(world)
    assert runs_of(done) == [] and done.asset_events[0].metadata["chunks_committed"].value == len(keys)
    assert phases(world)["demo"] == "done"
    assert skipped(tick(world))

    # a reconnect after a successful import imports nothing
    world["sim"].set_status("demo", "STOPPED")
    tick(world)
    world["sim"].set_status("demo", "WORKING")
    assert runs_of(tick(world)) == []


def test_session_waits_for_working_and_takes_its_tenant(world: dict) -> None:
    [demo_plan] = runs_of(tick(world))
    assert demo_plan.partition_key == world["store"].find_channel("demo").slug
    world["sim"].set_status("sales", "STOPPED")
    assert runs_of(tick(world)) == []
    world["sim"].set_status("sales", "WORKING")
    [sales_plan] = runs_of(tick(world))
    sales = world["store"].find_channel("sales")
    assert sales.tenant_id == "acme" and sales.slug == channel_slug("sales", me_digits(world["sim"], "sales"))
    assert sales_plan.partition_key == sales.slug and sales_plan.tags[CHANNEL_TAG] == sales.slug


def test_reconnect_after_failed_import_plans_again(world: dict) -> None:
    [first] = runs_of(tick(world))
    world["sim"].set_status("demo", "STOPPED")  # the phone disconnects before planning: the plan run fails
    assert not launch(world, first).success
    tick(world)
    assert phases(world)["demo"] == "failed"
    world["sim"].set_status("demo", "SCAN_QR_CODE")
    assert runs_of(tick(world)) == []
    world["sim"].set_status("demo", "WORKING")
    [again] = runs_of(tick(world))
    assert again.run_key != first.run_key and again.partition_key == first.partition_key
    assert launch(world, again).success
    assert runs_of(tick(world)), "the new plan's chunks are launched"


def test_fresh_cursor_skips_a_channel_already_imported(world: dict) -> None:
    [plan] = runs_of(tick(world))
    launch(world, plan)
    for request in runs_of(tick(world)):
        launch(world, request)
    world["cursor"] = None  # e.g. the sensor was reset
    result = tick(world)
    assert runs_of(result) == [] and phases(world)["demo"] == "done"


def test_waha_outage_is_a_sensor_error_not_a_skip(world: dict) -> None:
    world["resources"] = {**world["resources"], "waha": WahaResource(base_url="http://127.0.0.1:9")}
    with pytest.raises(Exception):
        tick(world)


def import_demo(world: dict) -> str:
    """Connect-time import of demo, every run launched; returns the channel slug."""
    [plan] = runs_of(tick(world))
    assert launch(world, plan).success
    for request in runs_of(tick(world)):
        assert launch(world, request).success
    tick(world)
    assert phases(world)["demo"] == "done"
    return plan.partition_key


def latest_plan_time(world: dict, slug: str) -> int:
    return world["store"].latest_plan(world["store"].channel_by_slug(slug).id).plan_time


def crm_counts(world: dict, slug: str) -> dict[str, int]:
    return world["store"].counts(world["store"].channel_by_slug(slug).id)


def test_catch_up_plans_a_done_channel_again_once_a_cadence_has_passed(world: dict) -> None:
    slug = import_demo(world)
    before = crm_counts(world, slug)
    world["clock"].now = latest_plan_time(world, slug) + CADENCE.every_seconds - 1
    assert runs_of(tick(world)) == [], "not before a cadence has passed"
    world["clock"].now += 1
    [plan] = runs_of(tick(world))
    assert plan.partition_key == slug and plan.tags[TRIGGER_TAG] == "catchup" and plan.run_key.startswith("plan:")
    assert not plan.run_config, "an incremental plan: chats the chat list shows unchanged are left out"
    assert runs_of(tick(world)) == [], "planning: no second request"
    store, channel_id = world["store"], world["store"].channel_by_slug(slug).id
    assert launch(world, plan).success
    # nothing changed in WAHA: the plan holds only chats whose end no read could prove (listed without a time,
    # nothing served), and after its runs the channel is done again with no row changed
    latest = store.latest_plan(channel_id)
    assert latest.skipped.get("up_to_date", 0) > 0
    planned = store.plan_chats(latest.id)
    assert all(c.last_message_at is None and store.chat_coverage(channel_id, [c.chat_id]) == {}
               for c in planned.values()), planned
    for request in runs_of(tick(world)):
        assert launch(world, request).success
    tick(world)
    assert phases(world)["demo"] == "done" and crm_counts(world, slug) == before


def test_catch_up_is_deep_once_a_deep_interval_has_passed(world: dict) -> None:
    slug = import_demo(world)
    world["clock"].now = latest_plan_time(world, slug) + CADENCE.deep_every_seconds
    [plan] = runs_of(tick(world))
    assert plan.tags[TRIGGER_TAG] == "deep"
    assert plan.run_config == {"ops": {"channel_plan": {"config": {"all_chats": True}}}}
    assert launch(world, plan).success
    assert world["store"].latest_plan(world["store"].channel_by_slug(slug).id).all_chats
    chunk_runs = runs_of(tick(world))
    assert chunk_runs and all(r.tags[TRIGGER_TAG] == "deep" for r in chunk_runs), "every chat is read again"
    for request in chunk_runs:
        assert launch(world, request).success
    world["clock"].now = latest_plan_time(world, slug)
    assert runs_of(tick(world)) == [] and phases(world)["demo"] == "done"
    world["clock"].now += CADENCE.every_seconds
    [plan] = runs_of(tick(world))
    assert plan.tags[TRIGGER_TAG] == "catchup", "the next one is incremental again"


def test_catch_up_waits_while_a_cli_import_holds_the_channel(world: dict) -> None:
    slug = import_demo(world)
    world["clock"].now = latest_plan_time(world, slug) + CADENCE.every_seconds
    other = CrmStore.from_url(world["resources"]["crm"].database_url)
    try:
        with other.import_lock(slug):
            result = tick(world)
            assert runs_of(result) == [] and "catch-up waits for an import by" in (result.skip_message or "")
    finally:
        other.dispose()
    [plan] = runs_of(tick(world))
    assert plan.tags[TRIGGER_TAG] == "catchup"


def test_no_catch_up_when_the_cadence_is_zero(world: dict) -> None:
    world["defs"] = build_definitions(**world["resources"], catchup=CatchUp(every_seconds=0), clock=world["clock"])
    import_demo(world)
    world["clock"].now += 365 * 24 * 3600
    assert runs_of(tick(world)) == []
    sensor = world["defs"].resolve_sensor_def("waha_session_sensor")
    assert "never (WAHA_CATCHUP_MINUTES=0)" in (sensor.description or "")
