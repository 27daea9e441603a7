"""Stages that travel: with IMPORT_STAGE_URL on S3 (moto's server over real HTTP), a later stage re-executed on
another machine (another process, a fresh DAGSTER_HOME, the same stage URL) reads its inputs from S3 and asks
WAHA for no message; with the objects deleted it computes them again from WAHA and commits the same rows; and a
stage file that vanishes between the runner's listing and its read is computed again instead of failing the chunk.

Real processes (the CLI and Dagster runs in subprocesses, with their chunk worker processes), the simulator over
HTTP, PostgreSQL; the simulator's request counters tell what WAHA was asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.chunk_runner import ChunkFailed, ChunkRunner, StageDone
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.simulator import DatasetSpec, run_in_thread
from waha_pipeline.waha.client import WahaClient
from waha_pipeline_tests.crm_state import latest_plan, snapshot
from waha_pipeline_tests.object_store import S3, s3, s3_endpoint  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

LATER = ("session_batch", "committed_rows")

# Another machine: a fresh Dagster instance that knows nothing of the import, re-executing the later stages of
# every chunk (argv) as one ranged run, as a UI backfill of those assets would. Prints what it materialized.
REEXECUTE = """
import json, sys
import dagster as dg
from waha_pipeline.cli.launch import add_partitions
from waha_pipeline.definitions import build_definitions
from waha_pipeline.defs.partitions import CHUNKS

keys, stages = sys.argv[1].split(","), sys.argv[2].split(",")
with dg.DagsterInstance.get() as instance:
    add_partitions(instance, CHUNKS, keys)
    result = build_definitions().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(s) for s in stages], raise_on_error=False,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    done = [{"asset": m.asset_key.path[-1], "chunk": m.partition,
             "metadata": {k: v.value for k, v in m.metadata.items()}}
            for m in result.asset_materializations_for_node("chunk_import")]
    print(json.dumps({"success": result.success, "materialized": done}, default=str))
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    with run_in_thread(DatasetSpec(seed=21, chats=70, target_messages=450)) as handle:
        yield handle


@pytest.fixture
def machines(sim: Any, s3: S3, pg_url: str, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """The environment every machine shares (WAHA, CRM, stage URL, AWS_*), and a CLI import done on machine A."""
    shared = {name: value for name, value in os.environ.items()
              if not name.startswith(("WAHA_", "IMPORT_", "DATABASE_URL", "DAGSTER_HOME", "CRM_"))}
    shared.update(s3.env, WAHA_BASE_URL=sim.base_url, DATABASE_URL=pg_url, IMPORT_STAGE_URL=s3.url("stages"))
    home = tmp_path / "machine-a"
    cli = Path(sys.executable).with_name("waha-pipeline")
    done = subprocess.run([str(cli), "import", "demo", "--chunk-size", "20"], env={**shared, "DAGSTER_HOME": str(home)},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = latest_plan(pg_url)
    assert len(plan["chunks"]) >= 3 and {c["status"] for c in plan["chunks"]} == {"committed"}
    assert not (home / "storage" / "waha_stages").exists(), "no stage file is kept on machine A's disk"
    return {"env": shared, "plan": plan, "url": pg_url, "tmp": tmp_path}


def reexecute(machines: dict[str, Any], name: str, stages: tuple[str, ...] = LATER) -> dict[str, Any]:
    home = machines["tmp"] / name
    home.mkdir()
    keys = ",".join(c["key"] for c in machines["plan"]["chunks"])
    done = subprocess.run([sys.executable, "-c", REEXECUTE, keys, ",".join(stages)],
                          env={**machines["env"], "DAGSTER_HOME": str(home)}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["success"], done.stderr[-4000:]
    assert not (home / "storage" / "waha_stages").exists()
    return result


def committed(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["chunk"]: m["metadata"] for m in result["materialized"] if m["asset"] == "committed_rows"}


def test_a_later_stage_on_another_machine_reads_its_inputs_from_s3_or_recomputes_them_when_gone(
    machines: dict[str, Any], sim: Any, s3: S3  # noqa: F811
) -> None:
    plan, url = machines["plan"], machines["url"]
    keys = [c["key"] for c in plan["chunks"]]
    before = snapshot(url)
    objects = s3.keys("stages")
    for key in keys:  # every chunk's stage files are on S3, under the local layout
        assert f"stages/{key.split('.')[0]}/{plan['id']}/{key}/assigned.arrow" in objects

    sim.reset_stats()
    result = reexecute(machines, "machine-b")
    assert {(m["asset"], m["chunk"]) for m in result["materialized"]} == {(s, k) for s in LATER for k in keys}
    assert sim.stats()["messages"] == 0, "the inputs came from S3, not from WAHA"
    assert all(meta["waha_requests"] == 0 and "stages_recomputed" not in meta for meta in committed(result).values())
    assert snapshot(url) == before

    s3.filesystem().rm(f"{s3.bucket}/stages", recursive=True)
    assert s3.keys("stages") == []
    sim.reset_stats()
    result = reexecute(machines, "machine-c")
    assert set(committed(result)) == set(keys)
    assert sim.stats()["messages"] > 0, "with the objects gone, the chunks asked WAHA again"
    assert sum(meta["waha_requests"] for meta in committed(result).values()) > 0
    assert snapshot(url) == before, "computed again from WAHA, the same rows"
    assert {c["status"] for c in latest_plan(url)["chunks"]} == {"committed"}
    # what machine C computed is on S3 again for the next machine
    assert {f"stages/{k.split('.')[0]}/{plan['id']}/{k}/assigned.arrow" for k in keys} <= set(s3.keys("stages"))


class VanishingStageStore(StageStore):
    """The real store on S3, with the named files of each chunk deleted from the bucket right after the runner
    lists them: what another machine's prune, a lifecycle rule or an operator does between the check and the read."""

    def __init__(self, url: str, s3: S3, vanish: tuple[str, ...]) -> None:  # noqa: F811
        super().__init__(url)
        self.s3, self.vanish = s3, vanish

    def names(self, plan_id: str, chunk_key: str) -> set[str]:
        listed = super().names(plan_id, chunk_key)
        prefix = f"{self.s3.bucket}/stages/{chunk_key.split('.')[0]}/{plan_id}/{chunk_key}"
        for name in self.vanish:
            self.s3.filesystem().rm(f"{prefix}/{name}.arrow")
        return listed


@pytest.mark.parametrize(("vanish", "recomputed", "asks_waha"), [
    (("messages",), ["resolved_contacts"], False),  # resolved again from the fetched messages on S3
    (("messages", "fetched"), ["resolved_contacts", "fetched_messages"], True),  # and fetched again from WAHA
])
def test_a_stage_file_that_vanishes_after_the_check_is_computed_again(
    machines: dict[str, Any], sim: Any, s3: S3, vanish: tuple[str, ...], recomputed: list[str], asks_waha: bool,  # noqa: F811
) -> None:
    url, keys = machines["url"], [c["key"] for c in machines["plan"]["chunks"]]
    before = snapshot(url)
    store = CrmStore.from_url(url)
    sim.reset_stats()
    try:
        runner = ChunkRunner(store, VanishingStageStore(s3.url("stages"), s3, vanish),
                             lambda: WahaClient(sim.base_url, concurrency=4))
        events = list(runner.run(keys, set(LATER)))
    finally:
        store.dispose()
    assert not [e for e in events if isinstance(e, ChunkFailed)], events
    done = {(e.stage, e.chunk_key): e.metadata for e in events if isinstance(e, StageDone)}
    assert set(done) == {(s, k) for s in LATER for k in keys}
    for key in keys:
        assert done["committed_rows", key]["stages_recomputed"] == recomputed
    assert (sim.stats()["messages"] > 0) is asks_waha
    assert snapshot(url) == before
