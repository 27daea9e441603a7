"""waha_session_sensor: WAHA sessions that reach WORKING are planned, then their chunks are launched as ranged runs;
from then on every WORKING channel is caught up on a cadence.

A sensor cannot wait for a run inside one tick, so every session moves through a small state machine kept in the
cursor (JSON, one entry per WAHA session name of the watched server, with the slug of the channel it last was):

    (new or reconnected) --WORKING--> planning --plan run succeeded--> importing --all chunks committed--> done
                                          \\--plan run failed--> failed      \\--runs over, chunks left--> failed
    done | failed --WORKING, catch-up due, channel not being imported--> planning (incremental, or deep)

- A session is planned when it is WORKING and was not WORKING at the previous tick (first sight included), unless
  its import is under way or done. SCAN_QR_CODE, STOPPED, ... sessions are only remembered.
- Catch-up (WAHA_CATCHUP_MINUTES, read when the code location loads): a done or failed channel whose latest plan,
  made by any process, is older than the cadence is planned again; that plan leaves out the chats the chat list
  shows unchanged, so an unchanged channel costs one chat list and changes no row. Every WAHA_CATCHUP_DEEP_HOURS
  the catch-up is deep (`all_chats`): chat lists that lag and history WAHA syncs late are read too. It waits while
  the channel's import lock is held (a CLI import) or other runs of the channel are in progress.
- A sensor, not a schedule: a catch-up is the same two-step import as a connect (a plan run, then chunk runs
  from its result), per channel, only while its session is WORKING, and never beside a running import of the
  channel; only the sensor's state machine knows all of that.
- Run keys are deterministic (`plan:{slug}:{attempt}`, `chunks:{plan_id}:{first chunk}`), so a tick repeated after
  a daemon crash launches nothing twice.
- WAHA or CRM errors propagate: an outage shows as a failed sensor tick, never as "nothing new".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from waha_pipeline.crm.records import ChannelRecord, ChunkRecord
from waha_pipeline.defs.assets import MAX_CHUNKS_PER_RUN
from waha_pipeline.defs.jobs import channel_plan_job, chunk_import_job
from waha_pipeline.defs.partitions import channel_partitions, chunk_partitions
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.domain.catchup import DEEP, catchup_due
from waha_pipeline.importer.channel_plan import ChannelNotPlannable, resolve_channel
from waha_pipeline.instance.runs import (
    RANGE_END, RANGE_START, contiguous_ranges, other_runs_in_progress, run_tags, waha_server_label,
)
from waha_pipeline.settings import CatchUp
from waha_pipeline.waha.models import SessionInfo

WORKING = "WORKING"
REQUEST_TAG = "waha_pipeline/request"  # `{slug}.{attempt}` on the plan run and on every chunk run of one import
TRIGGER_TAG = "waha_pipeline/trigger"  # what started the import: connect | catchup | deep
CONNECT = "connect"
SENSOR_INTERVAL_SECONDS = 10
CURSOR_VERSION = 1

PLANNING, IMPORTING, DONE, FAILED = "planning", "importing", "done", "failed"
IN_FLIGHT = (PLANNING, IMPORTING)


@dataclass
class SessionState:
    """What the sensor remembers about one WAHA session."""

    status: str | None = None  # WAHA status at the previous tick
    phase: str | None = None  # None | planning | importing | done | failed
    attempt: int = 0  # imports started for this session (run keys and request tags use it)
    plan_id: str | None = None
    summary: dict[str, int] = field(default_factory=dict)  # last channel summary reported to the UI
    trigger: str = CONNECT  # what started the latest import
    deep_at: float | None = None  # when the latest import that read every chat started

    @property
    def request(self) -> str:
        return f"{self.slug}.{self.attempt}"

    slug: str = ""


def load_cursor(cursor: str | None) -> dict[str, SessionState]:
    if not cursor:
        return {}
    data = json.loads(cursor)
    return {name: SessionState(**state) for name, state in data.get("sessions", {}).items()}


def dump_cursor(states: dict[str, SessionState]) -> str:
    sessions = {
        name: {"status": s.status, "phase": s.phase, "attempt": s.attempt, "plan_id": s.plan_id,
               "summary": s.summary, "slug": s.slug, "trigger": s.trigger, "deep_at": s.deep_at}
        for name, s in sorted(states.items())
    }
    return json.dumps({"v": CURSOR_VERSION, "sessions": sessions}, sort_keys=True)


@dataclass
class TickOutcome:
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    channel_keys: list[str] = field(default_factory=list)
    chunk_keys: list[str] = field(default_factory=list)
    events: list[dg.AssetObservation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_session_sensor(catchup: CatchUp, clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    """The sensor with its catch-up cadence; `clock` gives the time (tests pass a fake one)."""

    @dg.sensor(
        name="waha_session_sensor",
        jobs=[channel_plan_job, chunk_import_job],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Imports WAHA sessions that reach WORKING (plans the channel, then launches its chunks as "
        "ranged runs), then catches every WORKING channel up " + _cadence_text(catchup) + ".",
    )
    def waha_session_sensor(context: dg.SensorEvaluationContext, waha: WahaResource,
                            crm: CrmResource) -> dg.SensorResult | dg.SkipReason:
        settings = waha.settings()
        base_url = waha.base_url or settings.waha_base_url
        if not base_url:
            return dg.SkipReason("WAHA_BASE_URL is not set: no WAHA server to watch")
        sessions = asyncio.run(_list_sessions(waha))
        states = load_cursor(context.cursor)
        outcome = TickOutcome()
        now = clock()
        for session in sessions:
            state = states.setdefault(session.name, SessionState())
            _advance(context.instance, crm, session, state, base_url, settings.tenant_id, now, outcome)
            if state.phase in (DONE, FAILED) and session.status == WORKING and state.slug:
                _catch_up(context.instance, crm, state, base_url, catchup, now, outcome)
        cursor = dump_cursor(states)
        if not outcome.run_requests and not outcome.events:
            if cursor != context.cursor:
                # only statuses changed (e.g. a session waiting for its QR scan): remember them
                return dg.SensorResult(skip_reason=_skip_text(sessions, outcome), cursor=cursor)
            return dg.SkipReason(_skip_text(sessions, outcome))
        requests: list[dg.DynamicPartitionsRequest] = []
        if outcome.channel_keys:
            requests.append(channel_partitions.build_add_request(
                _new_keys(context.instance, channel_partitions.name, outcome.channel_keys)))
        if outcome.chunk_keys:
            requests.append(chunk_partitions.build_add_request(
                _new_keys(context.instance, chunk_partitions.name, outcome.chunk_keys)))
        return dg.SensorResult(
            run_requests=outcome.run_requests,
            dynamic_partitions_requests=[r for r in requests if r.partition_keys],
            asset_events=outcome.events,
            cursor=cursor,
        )

    return waha_session_sensor


def _cadence_text(catchup: CatchUp) -> str:
    if not catchup.enabled:
        return "never (WAHA_CATCHUP_MINUTES=0)"
    deep = f", all chats every {catchup.deep_every_seconds / 3600:g} h" if catchup.deep_every_seconds > 0 else ""
    return f"every {catchup.every_seconds / 60:g} min{deep}"


async def _list_sessions(waha: WahaResource) -> list[SessionInfo]:
    async with waha.client() as client:
        return await client.list_sessions(all=True)


def _advance(
    instance: dg.DagsterInstance,
    crm: CrmResource,
    session: SessionInfo,
    state: SessionState,
    base_url: str,
    default_tenant: str,
    now: float,
    outcome: TickOutcome,
) -> None:
    """Move one session's state machine forward by at most one step per phase, adding requests to `outcome`.

    The channel is (tenant, session name, the account the session reports): when a session comes up with another
    WhatsApp account than before, it is another channel (another slug), imported from the start."""
    server = waha_server_label(base_url)
    came_up = session.status == WORKING and state.status != WORKING
    state.status = session.status
    if state.phase == PLANNING:
        _after_planning(instance, state, server, outcome)
    if state.phase == IMPORTING:
        _after_importing(instance, crm, state, outcome)
    if session.status != WORKING:
        if state.phase is None:
            outcome.notes.append(f"{session.name} is {session.status}, not importing until WORKING")
        return
    if not came_up or state.phase in IN_FLIGHT:
        return
    try:
        channel = resolve_channel(crm.store, session, default_tenant=default_tenant, waha_server=base_url)
    except ChannelNotPlannable as exc:
        state.status = None  # look again at the next tick: WORKING without an account yet
        outcome.notes.append(str(exc))
        return
    if channel.slug != state.slug:  # first sight, or another account under this session name: another channel
        state.slug, state.phase, state.plan_id, state.summary = channel.slug, None, None, {}
    if state.phase == DONE:
        return
    if state.phase is None and _already_imported(crm, channel):
        state.phase = DONE  # imported before this sensor saw it (CLI, or a reset cursor): nothing to do
        outcome.notes.append(f"{session.name} ({channel.slug}) was already imported")
        return
    # new channel, or reconnected after a failed import: plan it
    _request_plan(state, server, CONNECT, now, outcome)


def _catch_up(instance: dg.DagsterInstance, crm: CrmResource, state: SessionState, base_url: str,
              catchup: CatchUp, now: float, outcome: TickOutcome) -> None:
    """Plan the channel again when its catch-up is due and nothing else imports it."""
    channel = crm.store.channel_by_slug(state.slug)
    if channel is None:
        return
    plan = crm.store.latest_plan(channel.id)
    trigger = catchup_due(now, plan.plan_time if plan else None, state.deep_at, catchup.every_seconds,
                          catchup.deep_every_seconds)
    if trigger is None:
        return
    holder = crm.store.import_lock_holder(state.slug)
    others = other_runs_in_progress(instance, state.slug)
    if holder is not None or others:
        busy = f"an import by {holder}" if holder else f"run(s) {', '.join(r[:8] for r in others[:3])}"
        outcome.notes.append(f"{state.slug}: catch-up waits for {busy}")
        return
    _request_plan(state, waha_server_label(base_url), trigger, now, outcome)


def _request_plan(state: SessionState, server: str, trigger: str, now: float, outcome: TickOutcome) -> None:
    """A plan run for the channel's next import; a deep one plans every chat, not only those that changed (so
    does a channel's first import: nothing of it is covered yet)."""
    if trigger == DEEP or (trigger == CONNECT and state.deep_at is None):
        state.deep_at = now
    state.attempt += 1
    state.phase, state.plan_id, state.summary, state.trigger = PLANNING, None, {}, trigger
    outcome.channel_keys.append(state.slug)
    run_config = {"ops": {"channel_plan": {"config": {"all_chats": True}}}} if trigger == DEEP else None
    outcome.run_requests.append(
        dg.RunRequest(
            run_key=f"plan:{state.slug}:{state.attempt}",
            job_name=channel_plan_job.name,
            partition_key=state.slug,
            run_config=run_config or {},
            tags={**run_tags(state.slug, server, 0), REQUEST_TAG: state.request, TRIGGER_TAG: trigger},
        )
    )


def _after_planning(instance: dg.DagsterInstance, state: SessionState, server: str, outcome: TickOutcome) -> None:
    runs = _runs(instance, state.request, channel_plan_job.name)
    succeeded = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    if not succeeded:
        if runs and all(_over(r) for r in runs):
            state.phase = FAILED
            outcome.notes.append(f"{state.slug}: planning failed (run {runs[0].run_id})")
        return
    plan_id, chunk_keys = _plan_from_run(instance, succeeded[0].run_id)
    state.phase, state.plan_id = IMPORTING, plan_id
    if not chunk_keys:
        state.phase = DONE
        return
    ordered = _extend(instance.get_dynamic_partitions(chunk_partitions.name), chunk_keys)
    outcome.chunk_keys.extend(chunk_keys)
    for keys in contiguous_ranges(ordered, chunk_keys, MAX_CHUNKS_PER_RUN):
        outcome.run_requests.append(
            dg.RunRequest(
                run_key=f"chunks:{plan_id}:{keys[0]}",
                job_name=chunk_import_job.name,
                tags={
                    **run_tags(state.slug, server, len(keys)),
                    REQUEST_TAG: state.request,
                    TRIGGER_TAG: state.trigger,
                    RANGE_START: keys[0],
                    RANGE_END: keys[-1],
                },
            )
        )


def _after_importing(instance: dg.DagsterInstance, crm: CrmResource, state: SessionState, outcome: TickOutcome) -> None:
    assert state.plan_id is not None
    chunks = crm.store.plan_chunks(state.plan_id)
    summary = channel_summary(chunks)
    if summary != state.summary:
        state.summary = summary
        outcome.events.append(
            dg.AssetObservation(asset_key="channel_plan", partition=state.slug, metadata=_summary_metadata(state.plan_id, summary))
        )
    if summary["pending"] == 0 and summary["failed"] == 0:
        state.phase = DONE
        return
    runs = _runs(instance, state.request, chunk_import_job.name)
    if runs and all(_over(r) for r in runs):
        state.phase = FAILED
        outcome.notes.append(f"{state.slug}: {summary['failed'] + summary['pending']} chunk(s) not committed")


def channel_summary(chunks: list[ChunkRecord]) -> dict[str, int]:
    """Chunk counts by ledger status plus committed totals: the channel-level line shown in the UI."""
    committed = [c for c in chunks if c.status == "committed"]
    return {
        "chunks": len(chunks),
        "committed": len(committed),
        "failed": sum(1 for c in chunks if c.status == "failed"),
        "pending": sum(1 for c in chunks if c.status not in ("committed", "failed")),
        "chats": sum(c.chats for c in chunks),
        "messages": sum(c.messages or 0 for c in committed),
        "sessions": sum(c.sessions or 0 for c in committed),
        "contacts": sum(c.contacts or 0 for c in committed),
        "rejects": sum(c.rejects or 0 for c in committed),
    }


def _summary_metadata(plan_id: str, summary: dict[str, int]) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        **{f"chunks_{k}" if k in ("committed", "failed", "pending") else k: dg.MetadataValue.int(v) for k, v in summary.items()},
    }


def _plan_from_run(instance: dg.DagsterInstance, run_id: str) -> tuple[str, list[str]]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey("channel_plan"):
            metadata = materialization.metadata
            return str(metadata["plan_id"].value), list(metadata["chunk_keys"].value)  # type: ignore[arg-type]
    raise RuntimeError(f"channel_plan run {run_id} succeeded without a channel_plan materialization")


def _runs(instance: dg.DagsterInstance, request: str, job_name: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags={REQUEST_TAG: request})))


def _over(run: dg.DagsterRun) -> bool:
    """Finished for good: a failed run that the daemon will retry (crash retry) is not over yet."""
    return run.is_finished and run.tags.get("dagster/will_retry") != "true"


def _already_imported(crm: CrmResource, channel: ChannelRecord) -> bool:
    plan = crm.store.latest_plan(channel.id)
    if plan is None:
        return False
    chunks = crm.store.plan_chunks(plan.id)
    return bool(chunks) and all(c.status == "committed" for c in chunks)


def _extend(existing: list[str], keys: list[str]) -> list[str]:
    """The partition order after the daemon appends `keys` (existing keys keep their place)."""
    present = set(existing)
    return existing + [k for k in dict.fromkeys(keys) if k not in present]


def _new_keys(instance: dg.DagsterInstance, name: str, keys: list[str]) -> list[str]:
    present = set(instance.get_dynamic_partitions(name))
    return [k for k in dict.fromkeys(keys) if k not in present]  # no duplicates in one request (SQLite rejects them)


def _skip_text(sessions: list[SessionInfo], outcome: TickOutcome) -> str:
    if not sessions:
        return "WAHA has no sessions"
    detail = "; ".join(outcome.notes)
    return f"nothing new in {len(sessions)} WAHA session(s)" + (f": {detail}" if detail else "")
