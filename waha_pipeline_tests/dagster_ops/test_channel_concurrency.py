"""Two imports of one channel never plan or commit at the same time, however their runs start: a run launched
without any of the product's tags (as a UI backfill launches it) waits while another process holds the channel's
import lock and runs once it is free, or fails with one clear line after its wait bound, having changed nothing.
The other process is a real one: a process that holds the lock itself enters it again (a CLI's in-process runs).
And steps that call one WAHA server hold a slot of its Dagster concurrency pool, whatever started their run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.definitions import build_definitions
from waha_pipeline.defs import assets
from waha_pipeline.cli.launch import add_partitions
from waha_pipeline.defs.partitions import CHANNELS, CHUNKS
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.instance.runs import waha_pool
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.settings import CatchUp
from waha_pipeline.simulator.models import DatasetSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline_tests.dagster_ops.stack import wait_for

HOLDER = """
import sys
from waha_pipeline.crm.store import CrmStore
store = CrmStore.from_url(sys.argv[1])
with store.import_lock(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    with run_in_thread(DatasetSpec(seed=9, chats=30, target_messages=150)) as handle:
        yield handle


@pytest.fixture
def world(sim: Any, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("WAHA_BASE_URL", sim.base_url)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    resources = {"waha": WahaResource(base_url=sim.base_url),
                 "crm": CrmResource(database_url=pg_url, stage_dir=str(tmp_path / "stages"))}
    store = CrmStore.from_url(pg_url)
    slug = channel_slug("demo", sim.state.dataset.sessions["demo"].me_phone)
    pools = {"concurrency": {"pools": {"default_limit": 1}}}  # one step per WAHA server at a time
    with dg.instance_for_test(overrides=pools) as instance:
        yield {"defs": build_definitions(**resources, catchup=CatchUp(every_seconds=0)), "instance": instance,
               "store": store, "url": pg_url, "slug": slug, "pool": waha_pool(sim.base_url)}
    store.dispose()


class Holder:
    """Another process holding the channel's import lock until released."""

    def __init__(self, url: str, slug: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, url, slug], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.communicate("\n", timeout=30)


def plan(world: dict[str, Any]) -> dg.ExecuteInProcessResult:
    add_partitions(world["instance"], CHANNELS, [world["slug"]])
    return world["defs"].resolve_job_def("channel_plan_job").execute_in_process(
        instance=world["instance"], partition_key=world["slug"], raise_on_error=False)


def backfill_run(world: dict[str, Any], keys: list[str]) -> dg.ExecuteInProcessResult:
    """A run of the chunk assets over a partition range with no tags of ours, as a UI backfill launches it."""
    add_partitions(world["instance"], CHUNKS, keys)
    return world["defs"].resolve_implicit_global_asset_job_def().execute_in_process(
        instance=world["instance"], asset_selection=[dg.AssetKey(s) for s in STAGES],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        raise_on_error=False)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    return failures[0].step_failure_data.user_failure_data.description if failures else ""


def chunk_keys(world: dict[str, Any]) -> list[str]:
    channel = world["store"].channel_by_slug(world["slug"])
    return [c.chunk_key for c in world["store"].plan_chunks(world["store"].latest_plan(channel.id).id)]


def logged(world: dict[str, Any], text: str) -> bool:
    """Some run's event log holds `text`."""
    for run in world["instance"].get_runs():
        if any(text in (record.user_message or "") for record in world["instance"].all_logs(run.run_id)):
            return True
    return False


def test_a_run_without_our_tags_waits_for_the_other_import_then_runs(world: dict[str, Any]) -> None:
    assert plan(world).success
    keys = chunk_keys(world)
    channel = world["store"].channel_by_slug(world["slug"])
    plan_id = world["store"].latest_plan(channel.id).id
    holder = Holder(world["url"], world["slug"])
    result: list[dg.ExecuteInProcessResult] = []
    runner = threading.Thread(target=lambda: result.append(backfill_run(world, keys)), daemon=True)
    try:
        runner.start()
        waiting = f"channel {world['slug']!r} is being imported by waha-pipeline pid {holder.process.pid}"
        wait_for("the run to say it waits for the channel", lambda: logged(world, waiting) or not runner.is_alive(),
                 timeout=120, interval=0.1)
        assert runner.is_alive(), failure_text(result[0]) if result else "the run ended"
        assert all(c.status == "pending" for c in world["store"].plan_chunks(plan_id)), "it imported meanwhile"
    finally:
        holder.release()
    runner.join(timeout=300)
    assert result and result[0].success, failure_text(result[0]) if result else "the run did not end"
    assert all(c.status == "committed" for c in world["store"].plan_chunks(plan_id))


def test_a_run_that_cannot_get_its_channel_fails_in_one_line_and_changes_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan(world).success
    keys = chunk_keys(world)
    channel = world["store"].channel_by_slug(world["slug"])
    before = world["store"].latest_plan(channel.id)
    monkeypatch.setattr(assets, "CHANNEL_WAIT_SECONDS", 0)
    holder = Holder(world["url"], world["slug"])
    try:
        run = backfill_run(world, keys)
        assert not run.success
        text = failure_text(run)
        assert text.startswith(f"channel {world['slug']!r} is being imported by waha-pipeline pid "
                               f"{holder.process.pid}") and text.endswith("nothing was done (waited 0 s)"), text
        planned = plan(world)
        assert not planned.success and "is being imported by" in failure_text(planned)
    finally:
        holder.release()
    assert world["store"].latest_plan(channel.id) == before, "no plan was recorded meanwhile"
    assert all(c.status == "pending" for c in world["store"].plan_chunks(before.id))
    assert world["store"].counts(channel.id)["messages"] == 0


def test_steps_of_one_waha_server_take_turns_in_its_pool(world: dict[str, Any]) -> None:
    assert plan(world).success
    keys = chunk_keys(world)
    holder = Holder(world["url"], world["slug"])
    results: dict[str, dg.ExecuteInProcessResult] = {}
    chunks = threading.Thread(target=lambda: results.update(chunks=backfill_run(world, keys)), daemon=True)
    planning = threading.Thread(target=lambda: results.update(plan=plan(world)), daemon=True)
    try:
        chunks.start()  # takes the pool's only slot, then waits for the channel
        wait_for("the chunk run to hold the slot and wait for the channel",
                 lambda: logged(world, "is being imported by") or not chunks.is_alive(), timeout=120, interval=0.1)
        planning.start()  # another run against the same WAHA server: no slot left
        wait_for("the plan run to wait for the pool", lambda: logged(world, f"blocked by limit for pool {world['pool']}")
                 or not planning.is_alive(), timeout=120, interval=0.1)
        assert chunks.is_alive() and planning.is_alive() and "plan" not in results
    finally:
        holder.release()
    chunks.join(timeout=300)
    planning.join(timeout=300)
    assert results["chunks"].success and results["plan"].success
    def step_times(run_id: str, kind: dg.DagsterEventType) -> list[float]:
        return [r.timestamp for r in world["instance"].all_logs(run_id, of_type=kind)]

    chunks_done = max(step_times(results["chunks"].run_id, dg.DagsterEventType.STEP_SUCCESS))
    plan_started = min(step_times(results["plan"].run_id, dg.DagsterEventType.STEP_START))
    assert plan_started >= chunks_done, "the plan step started while the chunk step held the only slot"
