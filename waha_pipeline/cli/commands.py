"""The commands that go through the Dagster instance in DAGSTER_HOME: import, status, rerun-failed.

Every chunk of a plan ends committed or failed, or stays visibly pending: `import` and `rerun-failed` hold the
channel's import lock (CrmStore.import_lock) while they run chunks, so a pending chunk is live exactly while a
process holds it (or a Dagster run launched by a sensor, the UI or a backfill is in progress for the channel);
`rerun-failed` re-runs the failed chunks of the latest plan and its pending ones that nothing works on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa

from waha_pipeline.cli.report import chunk_table, failure_line, state_counts, up_to_date_note
from waha_pipeline.crm.ledger import primary_message
from waha_pipeline.crm.records import ChunkRecord, PlanRecord
from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.store import CrmStore, ImportRunning
from waha_pipeline.defs.assets import PlanConfig
from waha_pipeline.defs.launch import (
    INTERRUPTED,
    Signals,
    add_partitions,
    chunk_failures,
    other_runs_in_progress,
    run_chunks,
    run_errors,
    run_plan,
    was_interrupted,
)
from waha_pipeline.defs.partitions import CHUNKS
from waha_pipeline.definitions import build_definitions
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.errors import ConfigError, PipelineError, WahaPermanentError
from waha_pipeline.settings import Settings
from waha_pipeline.waha.client import WahaClient

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

DEFAULT_INSTANCE_YAML = """\
# Embedded single-machine instance (SQLite storage), created by waha-pipeline on first use.
# The deployable PostgreSQL configuration is the project's root dagster.yaml.
telemetry:
  enabled: false
nux:
  enabled: false
# The stock SQLite event log opens a new engine per event; this one keeps them (waha_pipeline/defs/sqlite_event_log.py).
event_log_storage:
  module: waha_pipeline.defs.sqlite_event_log
  class: PooledSqliteEventLogStorage
"""


def prepare(settings: Settings) -> dg.DagsterInstance:
    """Create the embedded defaults on first use and bring the CRM schema to the latest migration. A CRM that
    cannot be reached or migrated here is a configuration error (wrong host, port, database name, credentials)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DEFAULT_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    # A new run's planned-materialization events (five per chunk) reach the event log as one batch, which the
    # embedded storage writes in one transaction per shard (defs/sqlite_event_log.py).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    try:
        upgrade(settings.database_url)
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"DATABASE_URL: cannot use the CRM database: {db_message(exc)}") from exc
    return dg.DagsterInstance.get()


def db_message(exc: BaseException) -> str:
    """A database error in one line: the driver's primary message, no SQL, parameters or row values."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(primary_message(str(exc)).split()) or type(exc).__name__


class CrmUnreachable(PipelineError):
    """The CRM failed while chunks ran or were reported (an outage); what is not committed is re-run later."""


@contextmanager
def _store(settings: Settings) -> Iterator[CrmStore]:
    store = CrmStore.from_url(settings.database_url)
    try:
        yield store
    finally:
        store.dispose()


def import_channel(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_require_session(settings, args.channel))  # unknown channel: exit 2 before anything is written
    verbose = bool(getattr(args, "verbose", False))
    defs = build_definitions()
    slug = channel_slug(args.channel)
    config = PlanConfig(
        days=args.days,
        session_timeout_minutes=args.session_timeout_minutes,
        chunk_size=args.chunk_size,
        include_groups=args.include_groups,
        all_chats=args.all_chats,
    )
    with prepare(settings) as instance, _store(settings) as store, Signals() as signals:
        with _channel_to_ourselves(store, instance, slug, args.channel):
            try:
                planned = run_plan(instance, defs, slug, config, settings.require_waha(), verbose=verbose)
            except KeyboardInterrupt:
                planned = None
            if planned is None or planned.error == INTERRUPTED or (signals() and not planned.success):
                raise PipelineError(f"planning channel {args.channel!r} was interrupted; nothing was imported "
                                    f"(run `{_import_command(args)}` again)")
            if not planned.success or planned.plan_id is None:
                raise PipelineError(f"planning channel {args.channel!r} failed: {planned.error}")
            print(f"plan {planned.plan_id}: {len(planned.chunk_keys)} chunk(s) for channel {args.channel!r}"
                  + up_to_date_note(planned.up_to_date))
            return _run_and_report(store, instance, defs, settings, signals, planned.plan_id, args.channel,
                                   planned.chunk_keys, verbose)


def status(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with _store(settings) as store:
            plan = _latest_plan(store, args.channel)
            chunks = store.plan_chunks(plan.id)
            holder = store.import_lock_holder(channel_slug(args.channel)) if _pending(chunks) else None
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"DATABASE_URL: cannot read the CRM database: {db_message(exc)}") from exc
    print(chunk_table(chunks))
    counts = state_counts(chunks)
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + up_to_date_note(plan.skipped.get("up_to_date", 0)))
    if holder is not None:
        print(f"import in progress: {holder}")
    elif _pending(chunks) or counts["failed"]:
        print(f"re-run the failed and pending chunks with: waha-pipeline rerun-failed {args.channel}")
    return EXIT_OK


def rerun_failed(settings: Settings, args: argparse.Namespace) -> int:
    """Failed chunks of the latest plan and its pending ones: with the channel's import lock held here, no other
    CLI process works on them, and no sensor or UI run of the channel is in progress, so pending means stale."""
    verbose = bool(getattr(args, "verbose", False))
    slug = channel_slug(args.channel)
    with prepare(settings) as instance, _store(settings) as store, Signals() as signals:
        _latest_plan(store, args.channel)  # an unknown channel is refused before anything else
        with _channel_to_ourselves(store, instance, slug, args.channel):
            plan_id = _latest_plan(store, args.channel).id  # read under the lock: no import replaces it meanwhile
            chunks = store.plan_chunks(plan_id)
            failed = [c.chunk_key for c in chunks if c.status == "failed"]
            pending = _pending(chunks)
            if not failed and not pending:
                print(f"channel {args.channel!r}: no failed or pending chunks in plan {plan_id}")
                return EXIT_OK
            print(f"re-running {len(failed)} failed and {len(pending)} pending chunk(s) of plan {plan_id}")
            todo = [c.chunk_key for c in chunks if c.status != "committed"]
            add_partitions(instance, CHUNKS, todo)  # a plan whose planning run was cut short has none yet
            return _run_and_report(store, instance, build_definitions(), settings, signals, plan_id, args.channel,
                                   todo, verbose)


@contextmanager
def _channel_to_ourselves(store: CrmStore, instance: dg.DagsterInstance, slug: str, channel: str) -> Iterator[None]:
    """Hold the channel's import lock; refuse (exit 2, nothing written) while another process imports it."""
    try:
        with store.import_lock(slug):
            others = other_runs_in_progress(instance, slug)
            if others:
                raise ImportRunning(f"channel {channel!r} has Dagster runs in progress ({', '.join(others[:3])})")
            yield
    except ImportRunning as exc:
        raise ConfigError(f"{exc}; nothing was started (see `waha-pipeline status {channel}`)") from None


def _run_and_report(
    store: CrmStore,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    settings: Settings,
    signals: Signals,
    plan_id: str,
    channel: str,
    chunk_keys: Sequence[str],
    verbose: bool,
) -> int:
    """Run the chunks; after an interrupt the chunks left pending are marked failed "interrupted" (the one
    committing has committed or rolled back by then). Then the report, one line per chunk not committed."""
    results: list[dg.ExecuteInProcessResult] = []
    interrupted = False
    try:
        results = run_chunks(instance, defs, channel_slug(channel), chunk_keys, settings.require_waha(),
                             verbose=verbose, stop=signals)
    except KeyboardInterrupt:
        interrupted = True
    interrupted = interrupted or signals() or any(was_interrupted(r) for r in results)
    try:
        if interrupted:
            store.fail_pending_chunks(plan_id, chunk_keys, INTERRUPTED)
        chunks = store.plan_chunks(plan_id)
    except sa.exc.DBAPIError as exc:
        for line in run_errors(results):
            print(line, file=sys.stderr)
        raise CrmUnreachable(f"the CRM database failed: {db_message(exc)}; what is not committed stays pending, "
                             f"finish with `waha-pipeline rerun-failed {channel}` once it is back") from None
    return _report(chunks, channel, results, interrupted)


def _report(chunks: list[ChunkRecord], channel: str, results: list[dg.ExecuteInProcessResult], interrupted: bool) -> int:
    print(chunk_table(chunks, errors=False))
    counts = state_counts(chunks)
    messages = sum(c.messages or 0 for c in chunks if c.status == "committed")
    print(f"{counts['committed']} committed, {counts['failed']} failed, {counts['pending']} pending; "
          f"{messages} messages committed")
    for line in dict.fromkeys(run_errors(results)):
        print(line, file=sys.stderr)
    stages = chunk_failures(results)
    not_done = [c for c in chunks if c.status != "committed"]
    for chunk in not_done:
        stage, reason = stages.get(chunk.chunk_key, (None, None))
        print(failure_line(chunk.chunk_key, chunk.status, stage, chunk.last_error or reason), file=sys.stderr)
    if not_done:
        if interrupted:
            print("interrupted: no chunk was started after the signal", file=sys.stderr)
        print(f"re-run them with: waha-pipeline rerun-failed {channel}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK  # every chunk committed, also when a signal came after the last one started


def _pending(chunks: list[ChunkRecord]) -> list[str]:
    return [c.chunk_key for c in chunks if c.status == "pending"]


def _import_command(args: argparse.Namespace) -> str:
    parts = ["waha-pipeline", "import", args.channel, "--days", str(args.days), "--chunk-size", str(args.chunk_size)]
    if args.session_timeout_minutes is not None:
        parts += ["--session-timeout-minutes", str(args.session_timeout_minutes)]
    parts += [flag for flag, on in (("--include-groups", args.include_groups), ("--all-chats", args.all_chats)) if on]
    return " ".join(parts)


def _latest_plan(store: CrmStore, channel: str) -> PlanRecord:
    found = store.find_channel(channel)
    plan = store.latest_plan(found.id) if found else None
    if plan is None:
        raise ConfigError(f"unknown channel {channel!r}: it was never imported (run `waha-pipeline import {channel}`)")
    return plan


async def _require_session(settings: Settings, channel: str) -> None:
    """The channel must exist and the key must be accepted before anything is written (exit 2 otherwise)."""
    async with WahaClient(settings.require_waha(), api_key=settings.waha_api_key) as client:
        try:
            await client.get_session(channel)
        except WahaPermanentError as exc:
            if exc.status in (401, 403):
                raise ConfigError(f"WAHA refused WAHA_API_KEY (HTTP {exc.status})") from None
            raise
