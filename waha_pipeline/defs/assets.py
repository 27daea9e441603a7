# Dagster resolves config and resource types from annotations at definition time: no `from __future__ import annotations` here.
"""The channel plan (on channel partitions) and the five chunk assets (on chunk partitions).

The chunk assets are one multi-asset step that loops over the chunks of its run, so a run covers a range
of chunks without a process per chunk, while every (asset, chunk) still ends up exactly Materialized or
Failed: events are logged per chunk, and the step raises at the end if any chunk failed.
"""


import asyncio
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import ExitStack

import dagster as dg

from waha_pipeline.crm.store import CrmStore, ImportRunning
from waha_pipeline.defs.checks import CHECK_SPECS, evaluate_chunk, fetched_from_instance
from waha_pipeline.defs.partitions import channel_partitions, chunk_partitions
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.domain.planning import slug_of_chunk
from waha_pipeline.importer.chunk_runner import ChunkFailed
from waha_pipeline.importer.channel_plan import PlanRequest, find_session, plan_and_record
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.importer.workers import run_in_workers

GROUP = "waha_import"
MAX_CHUNKS_PER_RUN = 50
STEP_RETRIES = 2  # a step retry redoes only the chunks of its range that did not commit
# How long a step waits for its channel while another import (a CLI, a run of another backfill) holds it.
CHANNEL_WAIT_SECONDS = 900

STAGE_DESCRIPTIONS = {
    "raw_chat_list": "The chunk's chats as the plan recorded them, with the identity each resolves to.",
    "fetched_messages": "Every WAHA message of the chunk's chats inside the plan window, raw and deduplicated.",
    "resolved_contacts": "Messages mapped and validated, malformed ones rejected, contacts resolved (lid merges).",
    "session_batch": "The chunk's messages with their conversation session over stored + new messages.",
    "committed_rows": "Contacts, messages, sessions, rejects and the ledger row, committed in one transaction.",
}


_PLAN_DEFAULTS = PlanRequest()


class PlanConfig(dg.Config):
    """A plan run's settings: PlanRequest as Dagster config (its meaning and defaults are PlanRequest's)."""

    days: int = _PLAN_DEFAULTS.days
    session_timeout_minutes: int | None = _PLAN_DEFAULTS.session_timeout_minutes
    chunk_size: int = _PLAN_DEFAULTS.chunk_size
    include_groups: bool = _PLAN_DEFAULTS.include_groups
    all_chats: bool = _PLAN_DEFAULTS.all_chats

    def request(self) -> PlanRequest:
        return PlanRequest(**self.model_dump())


def plan_channel(context: dg.AssetExecutionContext, config: PlanConfig, waha: WahaResource, crm: CrmResource) -> dg.MaterializeResult:
    plan_time = int(time.time())
    request = config.request()

    settings = waha.settings()

    async def plan() -> tuple:
        async with waha.client() as client:
            session = await find_session(client, crm.store, context.partition_key)
            return await plan_and_record(
                client, crm.store, session, request, default_tenant=settings.tenant_id, plan_time=plan_time,
                fetch_deadline=settings.waha_plan_deadline_seconds, waha_server=waha.server_url(),
            )

    with channels_to_ourselves(context, crm.store, [context.partition_key]):
        recorded = asyncio.run(plan())
    crm.stages().prune(recorded.plan.channel_slug, keep_plan_id=recorded.plan_id)
    chunk_keys = [c.key for c in recorded.plan.chunks]
    context.log.info("plan %s: %d chunks", recorded.plan_id, len(chunk_keys))
    return dg.MaterializeResult(
        metadata={
            "plan_id": recorded.plan_id,
            "tenant_id": recorded.tenant_id,
            "plan_time": dg.MetadataValue.timestamp(float(recorded.plan.plan_time)),
            "window_days": config.days,
            "session_timeout_minutes": recorded.plan.session_timeout_minutes,
            "chunks": len(chunk_keys),
            "chats": sum(len(c.chats) for c in recorded.plan.chunks),
            "skipped_chats": dg.MetadataValue.json(recorded.plan.skipped),
            "chunk_keys": dg.MetadataValue.json(chunk_keys),
        }
    )


def import_chunk_range(
    context: dg.AssetExecutionContext, waha: WahaResource, crm: CrmResource
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Re-running is safe: every write is an idempotent upsert and sessions are recomputed, never appended."""
    selected = {key.path[-1] for key in context.selected_asset_keys}
    keys, skip_committed = list(context.partition_keys), context.retry_number > 0
    checks = context.selected_asset_check_keys
    if not selected:  # only checks selected ("Execute checks"): evaluate the chunks as the CRM holds them
        for key in keys:
            yield from evaluate_chunk(crm.store, key, fetched_from_instance(context.instance, key), checks, context.instance)
        return
    with channels_to_ourselves(context, crm.store, [slug_of_chunk(key) for key in keys]):
        yield from _import_chunks(context, waha, crm, keys, selected, skip_committed, checks)


def channels_to_ourselves(context: dg.AssetExecutionContext, store: CrmStore, slugs: list[str]) -> ExitStack:
    """Hold the import lock of each channel the step works on, however its run was started (a sensor, a UI
    backfill without tags, a CLI import, whose own process holds it already), so two imports of one channel never
    plan or commit at the same time. While another process holds one, the step waits (logged), then fails."""
    stack = ExitStack()
    try:
        for slug in sorted(set(slugs)):
            stack.enter_context(store.import_lock(
                slug, wait_seconds=CHANNEL_WAIT_SECONDS,
                on_wait=lambda held: context.log.warning(f"{held}; waiting up to {CHANNEL_WAIT_SECONDS} s")))
    except ImportRunning as exc:
        stack.close()
        raise dg.Failure(description=f"{exc}; nothing was done (waited {CHANNEL_WAIT_SECONDS} s)",
                         allow_retries=False) from None
    except BaseException:
        stack.close()
        raise
    return stack


def _import_chunks(
    context: dg.AssetExecutionContext,
    waha: WahaResource,
    crm: CrmResource,
    keys: list[str],
    selected: set[str],
    skip_committed: bool,
    checks: AbstractSet[dg.AssetCheckKey],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    fetched: dict[str, int] = {}
    workers = waha.worker_count(crm, len(keys))
    spec = waha.runner_spec(crm, workers)
    if workers > 1:
        events = run_in_workers(spec, crm.store, keys, selected, workers=workers, skip_committed=skip_committed)
    else:
        events = spec.runner(crm.store).run(keys, selected, skip_committed=skip_committed)
    failures: list[ChunkFailed] = []
    try:
        for event in events:
            if isinstance(event, ChunkFailed):
                failures.append(event)
                context.log.error(f"chunk {event.chunk_key} failed at {event.stage}: {event.reason}")
                continue
            yield dg.AssetMaterialization(asset_key=event.stage, partition=event.chunk_key, metadata=event.metadata)
            if event.stage == "fetched_messages":
                fetched[event.chunk_key] = int(event.metadata["messages"])
            elif event.stage == "committed_rows" and checks:
                count = fetched.pop(event.chunk_key, None)
                if count is None:
                    count = fetched_from_instance(context.instance, event.chunk_key)
                yield from evaluate_chunk(crm.store, event.chunk_key, count, checks, context.instance)
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        # A stop signal ends the import: Dagster applies the op RetryPolicy to interrupts too, and a retry would
        # start the chunks again. The chunks left pending are marked failed "interrupted" by the CLI.
        raise dg.Failure(description="interrupted", allow_retries=False) from exc
    if failures:
        retryable = not all(f.permanent for f in failures)
        wait = max((f.retry_after or 0.0) for f in failures)
        if retryable and wait > 0 and context.retry_number < STEP_RETRIES:
            # WAHA said when to come back (an open circuit, a 429): the fixed policy delay could be too short.
            # The retry redoes only the chunks the ledger does not show committed.
            context.log.warning(f"{len(failures)} chunk(s) failed transiently; retrying in {wait:.0f} s")
            raise dg.RetryRequested(max_retries=STEP_RETRIES, seconds_to_wait=wait + 1.0)
        raise dg.Failure(
            description=f"{len(failures)} of {len(context.partition_keys)} chunk(s) failed: "
            + "; ".join(f"{f.chunk_key}: {f.reason}" for f in failures[:5]),
            metadata={
                "failed_chunks": dg.MetadataValue.json(
                    [{"chunk": f.chunk_key, "stage": f.stage, "reason": f.reason, "permanent": f.permanent} for f in failures]
                )
            },
            allow_retries=retryable,
        )


def import_assets(pool: str | None = None) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """`channel_plan` and the five chunk assets (`chunk_import`), both in `pool`: the Dagster concurrency pool of
    their WAHA server (run_tags.waha_pool), whose limit the instance sets; every run that plans or imports chunks
    holds a slot of it while its step runs, however the run was started."""
    plan = dg.asset(
        name="channel_plan",
        partitions_def=channel_partitions,
        group_name=GROUP,
        pool=pool,
        description="A channel's import plan: its chats split into chunks over a fixed window, stored in the CRM "
        "ledger.",
    )(plan_channel)
    chunks = dg.multi_asset(
        name="chunk_import",
        specs=[
            dg.AssetSpec(
                stage,
                partitions_def=chunk_partitions,
                skippable=True,
                # A chunk is cut from its channel's plan. No built-in mapping sends "{slug}.cNNNN" to "{slug}", so
                # the edge says "all channel plans": lineage only, nothing is loaded, and a chunk run or backfill
                # does not wait for channel partitions outside its selection.
                deps=[STAGES[i - 1]] if i else [dg.AssetDep("channel_plan", partition_mapping=dg.AllPartitionMapping())],
                group_name=GROUP,
                description=STAGE_DESCRIPTIONS[stage],
            )
            for i, stage in enumerate(STAGES)
        ],
        partitions_def=chunk_partitions,
        check_specs=CHECK_SPECS,  # evaluated per chunk right after it commits (defs/checks.py)
        can_subset=True,
        pool=pool,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_CHUNKS_PER_RUN),
        retry_policy=dg.RetryPolicy(
            max_retries=STEP_RETRIES, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
    )(import_chunk_range)
    return plan, chunks


# The assets without a pool: what the graph holds wherever the WAHA server is (build_definitions sets the pool).
channel_plan, chunk_import = import_assets()
