"""The commands that go through the Dagster instance in DAGSTER_HOME: import, status, rerun-failed."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import dagster as dg

from waha_pipeline.cli.report import chunk_table, state_counts, up_to_date_note
from waha_pipeline.crm.records import PlanRecord
from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.defs.assets import PlanConfig
from waha_pipeline.defs.launch import run_chunks, run_plan
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
    """Create the embedded defaults on first use and bring the CRM schema to the latest migration."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DEFAULT_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    # A new run's planned-materialization events (five per chunk) reach the event log as one batch, which the
    # embedded storage writes in one transaction per shard (defs/sqlite_event_log.py).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    upgrade(settings.database_url)
    return dg.DagsterInstance.get()


def import_channel(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_require_session(settings, args.channel))  # unknown channel: exit 2 before anything is written
    defs = build_definitions()
    slug = channel_slug(args.channel)
    config = PlanConfig(
        days=args.days,
        session_timeout_minutes=args.session_timeout_minutes,
        chunk_size=args.chunk_size,
        include_groups=args.include_groups,
        all_chats=args.all_chats,
    )
    with prepare(settings) as instance:
        planned = run_plan(instance, defs, slug, config, settings.require_waha())
        if not planned.success or planned.plan_id is None:
            raise PipelineError(f"planning channel {args.channel!r} failed: {planned.error}")
        print(f"plan {planned.plan_id}: {len(planned.chunk_keys)} chunk(s) for channel {args.channel!r}"
              + up_to_date_note(planned.up_to_date))
        run_chunks(instance, defs, slug, planned.chunk_keys, settings.require_waha())
    return _report(settings, planned.plan_id, args.channel)


def status(settings: Settings, args: argparse.Namespace) -> int:
    store = CrmStore.from_url(settings.database_url)
    try:
        plan = _latest_plan(store, args.channel)
        chunks = store.plan_chunks(plan.id)
    finally:
        store.dispose()
    print(chunk_table(chunks))
    counts = state_counts(chunks)
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + up_to_date_note(plan.skipped.get("up_to_date", 0)))
    return EXIT_OK


def rerun_failed(settings: Settings, args: argparse.Namespace) -> int:
    with prepare(settings) as instance:
        store = CrmStore.from_url(settings.database_url)
        try:
            plan_id = _latest_plan(store, args.channel).id
            failed = [c.chunk_key for c in store.plan_chunks(plan_id) if c.status == "failed"]
        finally:
            store.dispose()
        if not failed:
            print(f"channel {args.channel!r}: no failed chunks in plan {plan_id}")
            return EXIT_OK
        print(f"re-running {len(failed)} failed chunk(s) of plan {plan_id}")
        run_chunks(instance, build_definitions(), channel_slug(args.channel), failed, settings.require_waha())
    return _report(settings, plan_id, args.channel)


def _report(settings: Settings, plan_id: str, channel: str) -> int:
    store = CrmStore.from_url(settings.database_url)
    try:
        chunks = store.plan_chunks(plan_id)
    finally:
        store.dispose()
    print(chunk_table(chunks))
    counts = state_counts(chunks)
    messages = sum(c.messages or 0 for c in chunks if c.status == "committed")
    print(f"{counts['committed']} committed, {counts['failed']} failed, {counts['pending']} pending; "
          f"{messages} messages committed")
    not_done = [c.chunk_key for c in chunks if c.status != "committed"]
    if not_done:
        print(f"chunks not committed: {' '.join(not_done)}", file=sys.stderr)
        print(f"re-run them with: waha-pipeline rerun-failed {channel}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


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
