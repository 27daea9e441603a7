"""Launching plan and chunk runs against a Dagster instance, the way the CLI does it.

Runs cover contiguous ranges of chunk partitions (in the instance's insertion order) so that a channel's
chunks cost one run per range instead of one process per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from waha_pipeline.defs.assets import MAX_CHUNKS_PER_RUN, PlanConfig
from waha_pipeline.defs.partitions import CHANNELS, CHUNKS
from waha_pipeline.defs.run_tags import run_tags

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
# The CLI prints its own per-chunk summary; the run's full event log is in the instance (and the UI).
CONSOLE_WARNINGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    success: bool
    plan_id: str | None
    chunk_keys: list[str]
    error: str | None
    up_to_date: int = 0  # chats left out of the plan because nothing of theirs changed


def contiguous_ranges(ordered: Sequence[str], wanted: Sequence[str], max_len: int) -> list[list[str]]:
    """Split `wanted` into runs of keys adjacent in `ordered`, at most `max_len` each."""
    wanted_set = set(wanted)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted_set and len(current) < max_len:
            current.append(key)
            continue
        if current:
            ranges.append(current)
        current = [key] if key in wanted_set else []
    if current:
        ranges.append(current)
    return ranges


def add_partitions(instance: dg.DagsterInstance, name: str, keys: Sequence[str]) -> None:
    existing = set(instance.get_dynamic_partitions(name))
    new = list(dict.fromkeys(k for k in keys if k not in existing))  # SQLite rejects duplicates in one call
    if new:
        instance.add_dynamic_partitions(name, new)


def run_plan(
    instance: dg.DagsterInstance, defs: dg.Definitions, channel_slug: str, config: PlanConfig, waha_server: str
) -> PlannedRun:
    add_partitions(instance, CHANNELS, [channel_slug])
    result = defs.resolve_job_def("channel_plan_job").execute_in_process(
        instance=instance,
        partition_key=channel_slug,
        run_config={"ops": {"channel_plan": {"config": config.model_dump()}}, **CONSOLE_WARNINGS},
        tags=run_tags(channel_slug, waha_server, chunks=0),
        raise_on_error=False,
    )
    if not result.success:
        return PlannedRun(result.run_id, False, None, [], _failure_text(result))
    [materialization] = result.asset_materializations_for_node("channel_plan")
    metadata = materialization.metadata
    plan_id = str(metadata["plan_id"].value)
    chunk_keys = list(metadata["chunk_keys"].value)  # type: ignore[arg-type]
    up_to_date = int(metadata["skipped_chats"].value.get("up_to_date", 0))  # type: ignore[union-attr]
    add_partitions(instance, CHUNKS, chunk_keys)
    return PlannedRun(result.run_id, True, plan_id, chunk_keys, None, up_to_date)


def run_chunks(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    channel_slug: str,
    chunk_keys: Sequence[str],
    waha_server: str,
) -> list[dg.ExecuteInProcessResult]:
    """One in-process run per contiguous range, tagged like sensor runs (the tags matter for the UI and history;
    in-process runs are not watched by run monitoring, the per-chunk deadline bounds them instead)."""
    job = defs.resolve_job_def("chunk_import_job")
    results = []
    for keys in contiguous_ranges(instance.get_dynamic_partitions(CHUNKS), chunk_keys, MAX_CHUNKS_PER_RUN):
        results.append(
            job.execute_in_process(
                instance=instance,
                run_config=CONSOLE_WARNINGS,
                tags={RANGE_START: keys[0], RANGE_END: keys[-1], **run_tags(channel_slug, waha_server, len(keys))},
                raise_on_error=False,
            )
        )
    return results


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            return (error.message or "").strip().splitlines()[0] if error.message else error.cls_name or "failed"
    return "run failed"
