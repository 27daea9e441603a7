"""Asset checks on `committed_rows`, one evaluation per chunk partition: exactness visible in the UI's Checks tab.

Mechanism. Dagster 1.13 supports partitioned asset checks (preview): an `AssetCheckSpec` takes a
`partitions_def` equal to its asset's, the instance plans one execution per partition of a run
(`asset_check_executions.partition`) and the UI shows a check's status per partition.
The specs travel with `chunk_import`, so `Definitions(assets=[..., chunk_import])` registers them. An `AssetCheckResult`
takes its partition from the step's single partition key, which a ranged chunk run (many chunks per step) does
not have; so the `chunk_import` step logs an `AssetCheckEvaluation` with `partition=<chunk key>` itself, right
after each chunk commits, which is what `AssetCheckResult` turns into. Per chunk rather than per channel because
that is where an import's exactness is decided: a chunk commits (or fails) alone, a failing check names the
partition to re-run, and the checks of the chunks that committed still run when another chunk of the run fails.

The checks are declared as `check_specs` of the `chunk_import` multi-asset, so every run of `chunk_import_job`
(the CLI, sensor runs, UI backfills) evaluates them, and "Execute checks" in the UI runs the step with only the
checks selected: it then imports nothing and evaluates the selected chunks as the CRM holds them now.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterator

import dagster as dg
# The type of the public AssetCheckEvaluation's `target_materialization_data` field; Dagster exports no other way
# to name the materialization a partition's evaluation judges (dagster is pinned to one release in pyproject.toml).
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from waha_pipeline.crm import checks as crm_checks
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.defs.partitions import chunk_partitions

TARGET = dg.AssetKey("committed_rows")
FETCHED = dg.AssetKey("fetched_messages")
ACCOUNTED = "rows_accounted_for"
SESSIONS = "sessions_match_messages"
CONTACTS = "contacts_have_messages"

# Partitioned check specs are a preview feature of Dagster 1.13 (they warn on creation); pinned by the tests here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECK_SPECS = [
        dg.AssetCheckSpec(
            ACCOUNTED, asset=TARGET, partitions_def=chunk_partitions,
            description="Every row fetched for the chunk is a committed message, a reject or a skipped row "
                        "(by reason); the CRM still holds the messages the chunk committed.",
        ),
        dg.AssetCheckSpec(
            SESSIONS, asset=TARGET, partitions_def=chunk_partitions,
            description="Every message of the chunk's contacts is in one session of its own contact spanning it; each "
                        "session's counts and start/end are what its messages give.",
        ),
        dg.AssetCheckSpec(
            CONTACTS, asset=TARGET, partitions_def=chunk_partitions,
            description="No contact the chunk's chats identify is without a message in the CRM (any channel).",
        ),
    ]
CHECK_KEYS = frozenset(spec.key for spec in CHECK_SPECS)


def fetched_from_instance(instance: dg.DagsterInstance, chunk_key: str) -> int | None:
    """The chunk's latest `fetched_messages` count (metadata `messages`), for a chunk fetched in another run."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FETCHED, asset_partitions=[chunk_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("messages")
    return None if value is None else int(value.value)  # type: ignore[arg-type]


def target_of(instance: dg.DagsterInstance, chunk_key: str) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The chunk's latest `committed_rows` materialization: what the evaluation judges. Without it the UI shows the
    partition's check as not current (the way `AssetCheckResult` fills it in, for a partition of our choosing)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TARGET, asset_partitions=[chunk_key]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )


def evaluate_chunk(
    store: CrmStore,
    chunk_key: str,
    fetched: int | None,
    selected: Collection[dg.AssetCheckKey] = CHECK_KEYS,
    instance: dg.DagsterInstance | None = None,
) -> Iterator[dg.AssetCheckEvaluation]:
    """The selected checks of one chunk of its channel's latest plan, as the CRM holds it now."""
    target = None if instance is None else target_of(instance, chunk_key)
    found = store.latest_chunk(chunk_key)
    wanted = [spec for spec in CHECK_SPECS if spec.key in selected]
    if found is None:
        for spec in wanted:
            yield _evaluation(spec.name, chunk_key, crm_checks.Outcome(False, f"chunk {chunk_key}: not in any plan"),
                              target)
        return
    plan, chunk, chats = found
    with store.engine.connect() as conn:
        contact_ids = crm_checks.chunk_contact_ids(conn, plan, chats)
        run: dict[str, Callable[[], crm_checks.Outcome]] = {
            ACCOUNTED: lambda: crm_checks.accounted(
                chunk, fetched, crm_checks.stored_message_count(conn, plan, chunk.chat_ids)),
            SESSIONS: lambda: crm_checks.sessions_consistent(conn, plan.channel_id, contact_ids),
            CONTACTS: lambda: crm_checks.contacts_have_messages(conn, contact_ids),
        }
        outcomes = {spec.name: run[spec.name]() for spec in wanted}
    for spec in wanted:
        yield _evaluation(spec.name, chunk_key, outcomes[spec.name], target, plan_id=plan.id)


def _evaluation(
    name: str,
    chunk_key: str,
    outcome: crm_checks.Outcome,
    target: AssetCheckEvaluationTargetMaterializationData | None,
    plan_id: str | None = None,
) -> dg.AssetCheckEvaluation:
    metadata: dict[str, object] = {**outcome.counts}
    if plan_id is not None:
        metadata["plan_id"] = plan_id
    if outcome.offenders:
        metadata["offenders"] = dg.MetadataValue.json(outcome.offenders)
    return dg.AssetCheckEvaluation(
        asset_key=TARGET, check_name=name, passed=outcome.passed, partition=chunk_key,
        description=outcome.description, metadata=metadata, target_materialization_data=target,
    )
