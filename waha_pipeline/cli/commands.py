"""The commands that go through the Dagster instance in DAGSTER_HOME: import, status, rerun-failed.

Every chunk of a plan ends committed or failed, or stays visibly pending: `import` and `rerun-failed` hold the
channel's import lock (CrmStore.import_lock) while they run chunks, so a pending chunk is live exactly while a
process holds it (or a Dagster run launched by a sensor, the UI or a backfill is in progress for the channel);
`rerun-failed` re-runs the failed chunks of the latest plan and its pending ones that nothing works on.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TextIO

import dagster as dg
import sqlalchemy as sa

from waha_pipeline.cli.launch import (
    INTERRUPTED,
    Signals,
    add_partitions,
    chunk_failures,
    run_chunks,
    run_errors,
    run_plan,
    was_interrupted,
)
from waha_pipeline.cli.progress import ProgressReporter
from waha_pipeline.cli.report import (
    chunk_table, failure_line, json_document, skipped_line, state_counts, up_to_date_note,
)
from waha_pipeline.crm.ledger import primary_message
from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.records import ChannelRecord, ChunkRecord, PlanRecord
from waha_pipeline.crm.store import AmbiguousChannel, CrmStore, ImportRunning
from waha_pipeline.defs.assets import PlanConfig
from waha_pipeline.defs.location import build_definitions
from waha_pipeline.defs.partitions import CHUNKS
from waha_pipeline.errors import ConfigError, PipelineError, WahaPermanentError, WahaSessionNotFound
from waha_pipeline.importer.channel_plan import (
    ChannelNotPlannable, account_of, find_session, resolve_channel, session_of_channel,
)
from waha_pipeline.instance.runs import other_runs_in_progress
from waha_pipeline.settings import CatchUp, Settings
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.models import SessionInfo

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
NO_SENSOR_CATCHUP = CatchUp()  # commands run no sensor: WAHA_CATCHUP_* is the code location's to read

DEFAULT_INSTANCE_YAML = """\
# Embedded single-machine instance (SQLite storage), created by waha-pipeline on first use.
# The deployable PostgreSQL configuration is the project's root dagster.yaml.
telemetry:
  enabled: false
nux:
  enabled: false
# WAHA client and importer warnings (chunk workers forward theirs) land in the run's event log; INFO keeps the
# runs' own context.log.info lines, as Dagster gives the run's log manager this level too.
python_logs:
  managed_python_loggers:
    - waha_pipeline
  python_log_level: INFO
# Steps log through the event log (python_logs above); capturing their stdout/stderr costs two processes per run
# (`tail -F` and its watcher) and nothing the import prints there.
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
# The stock SQLite event log opens a new engine per event; this one keeps them (waha_pipeline/instance/sqlite_event_log.py).
event_log_storage:
  module: waha_pipeline.instance.sqlite_event_log
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
    # embedded storage writes in one transaction per shard (instance/sqlite_event_log.py).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    try:
        upgrade(settings.database_url)
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"DATABASE_URL: cannot use the CRM database: {db_message(exc)}") from exc
    # Two imports (e.g. of two WAHA servers) starting together on a new home would both create its SQLite
    # storages ("table runs already exists"): the first one creates them while the other waits.
    with (home / ".instance.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()


def db_message(exc: BaseException) -> str:
    """A database error in one line: the driver's primary message, no SQL, parameters or row values."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(primary_message(str(exc)).split()) or type(exc).__name__


class CrmUnreachable(PipelineError):
    """The CRM failed while chunks ran or were reported (an outage); what is not committed is re-run later."""


@dataclass(frozen=True)
class Output:
    """Where a command's report goes: text lines, or (`--json`) one JSON document and nothing else on stdout.
    Failures go to stderr either way, one line each."""

    json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)

    def say(self, text: str) -> None:
        if not self.json:
            print(text, file=self.stdout, flush=True)

    def document(self, doc: dict[str, Any]) -> None:
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=self.stdout, flush=True)

    def progress_stream(self) -> TextIO | None:
        """Progress goes with the text report; with --json only to a terminal's stderr."""
        if not self.json:
            return self.stdout
        return sys.stderr if _is_terminal(sys.stderr) else None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _store(settings: Settings) -> Iterator[CrmStore]:
    store = CrmStore.from_url(settings.database_url, settings.crm_commit_timeouts)
    try:
        yield store
    finally:
        store.dispose()


def import_channel(settings: Settings, args: argparse.Namespace, out: Output | None = None) -> int:
    """The channel is the one whose account the WAHA server at WAHA_BASE_URL reports for the session named (or for
    the session of the channel whose slug is given)."""
    out = out or Output()
    session = asyncio.run(_require_session(settings, args.channel))  # unknown name: exit 2 before anything is written
    verbose = bool(getattr(args, "verbose", False))
    defs = build_definitions(catchup=NO_SENSOR_CATCHUP)
    config = PlanConfig(**{name: getattr(args, name) for name in PlanConfig.model_fields})
    with prepare(settings) as instance, _store(settings) as store, Signals() as signals:
        channel = _import_target(settings, store, args.channel, session)
        slug, handle = channel.slug, _handle(store, channel, args.channel)
        with _channel_to_ourselves(store, instance, slug, handle):
            try:
                planned = run_plan(instance, defs, slug, config, settings.require_waha(), verbose=verbose)
            except KeyboardInterrupt:
                planned = None
            if planned is None or planned.error == INTERRUPTED or (signals() and not planned.success):
                raise PipelineError(f"planning channel {args.channel!r} was interrupted; nothing was imported "
                                    f"(run `{_import_command(args)}` again)")
            if not planned.success or planned.plan_id is None:
                raise PipelineError(f"planning channel {args.channel!r} failed: {planned.error}")
            out.say(f"channel {channel.label()}")
            out.say(f"plan {planned.plan_id}: {len(planned.chunk_keys)} chunk(s) for channel {args.channel!r}"
                    + up_to_date_note(planned.up_to_date))
            return _run_and_report(store, instance, defs, settings, signals, planned.plan_id, channel, handle,
                                   planned.chunk_keys, verbose, out)


STATUS_READ = "the status was read; the chunk states say whether the plan is complete"


def status(settings: Settings, args: argparse.Namespace, out: Output | None = None) -> int:
    out = out or Output()
    try:
        with _store(settings) as store:
            channel = _channel(store, args.channel)
            plan = _latest_plan(store, channel, args.channel)
            chunks = store.plan_chunks(plan.id)
            holder = store.import_lock_holder(channel.slug) if _pending(chunks) else None
            handle = _handle(store, channel, args.channel)
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"DATABASE_URL: cannot read the CRM database: {db_message(exc)}") from exc
    if out.json:
        doc = json_document(channel, plan, chunks, EXIT_OK, STATUS_READ)
        doc["import_in_progress"] = holder
        out.document(doc)
        return EXIT_OK
    out.say(chunk_table(chunks))
    counts = state_counts(chunks)
    out.say(", ".join(f"{n} {state}" for state, n in counts.items())
            + up_to_date_note(plan.skipped.get("up_to_date", 0)))
    if (skipped := skipped_line(chunks)) is not None:
        out.say(skipped)
    if holder is not None:
        out.say(f"import in progress: {holder}")
    elif _pending(chunks) or counts["failed"]:
        out.say(f"re-run the failed and pending chunks with: waha-pipeline rerun-failed {handle}")
    return EXIT_OK


def rerun_failed(settings: Settings, args: argparse.Namespace, out: Output | None = None) -> int:
    """Failed chunks of the latest plan and its pending ones: with the channel's import lock held here, no other
    CLI process works on them, and no sensor or UI run of the channel is in progress, so pending means stale."""
    out = out or Output()
    verbose = bool(getattr(args, "verbose", False))
    with prepare(settings) as instance, _store(settings) as store, Signals() as signals:
        channel = _channel(store, args.channel)
        _latest_plan(store, channel, args.channel)  # an unknown channel is refused before anything else
        slug, handle = channel.slug, _handle(store, channel, args.channel)
        with _channel_to_ourselves(store, instance, slug, handle):
            plan_id = _latest_plan(store, channel, args.channel).id  # under the lock: no import replaces it meanwhile
            chunks = store.plan_chunks(plan_id)
            failed = [c.chunk_key for c in chunks if c.status == "failed"]
            pending = _pending(chunks)
            if not failed and not pending:
                out.say(f"channel {args.channel!r}: no failed or pending chunks in plan {plan_id}")
                return EXIT_OK
            out.say(f"re-running {len(failed)} failed and {len(pending)} pending chunk(s) of plan {plan_id}")
            todo = [c.chunk_key for c in chunks if c.status != "committed"]
            add_partitions(instance, CHUNKS, todo)  # a plan whose planning run was cut short has none yet
            return _run_and_report(store, instance, build_definitions(catchup=NO_SENSOR_CATCHUP), settings, signals, plan_id, channel,
                                   handle, todo, verbose, out)


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
    record: ChannelRecord,
    channel: str,
    chunk_keys: Sequence[str],
    verbose: bool,
    out: Output,
) -> int:
    """Run the chunks, their progress printed from the ledger meanwhile; after an interrupt the chunks left pending
    are marked failed "interrupted" (the one committing has committed or rolled back by then). Then the report,
    one line per chunk not committed."""
    results: list[dg.ExecuteInProcessResult] = []
    interrupted = False
    stream = out.progress_stream()
    progress: AbstractContextManager[object] = (
        ProgressReporter(lambda: store.plan_chunks(plan_id), chunk_keys, stream) if stream else nullcontext()
    )
    try:
        with progress:
            results = run_chunks(instance, defs, record.slug, chunk_keys, settings.require_waha(),
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
    code = _report(chunks, channel, results, interrupted, out)
    if out.json:
        plan = store.get_plan(plan_id)
        if plan is None:
            raise PipelineError(f"plan {plan_id} is gone from the CRM ledger")
        out.document(json_document(record, plan, chunks, code))
    return code


def _report(chunks: list[ChunkRecord], channel: str, results: list[dg.ExecuteInProcessResult], interrupted: bool,
            out: Output) -> int:
    out.say(chunk_table(chunks, errors=False))
    counts = state_counts(chunks)
    messages = sum(c.messages or 0 for c in chunks if c.status == "committed")
    out.say(f"{counts['committed']} committed, {counts['failed']} failed, {counts['pending']} pending; "
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


def _channel(store: CrmStore, slug_or_name: str) -> ChannelRecord:
    """The one CRM channel of that slug or session name; a name several channels carry is refused (exit 2) with
    the candidates, never guessed."""
    try:
        found = store.find_channel(slug_or_name)
    except AmbiguousChannel as exc:
        example = exc.candidates[0].slug
        raise ConfigError(f"{exc} (e.g. `waha-pipeline status {example}`)") from None
    if found is None:
        raise ConfigError(f"unknown channel {slug_or_name!r}: it was never imported "
                          f"(run `waha-pipeline import {slug_or_name}`)")
    return found


def _handle(store: CrmStore, channel: ChannelRecord, typed: str) -> str:
    """How commands printed for the user name the channel: as typed while that names it alone, else its slug."""
    return typed if store.channels_matching(typed) == [channel] else channel.slug


def _latest_plan(store: CrmStore, channel: ChannelRecord, typed: str) -> PlanRecord:
    plan = store.latest_plan(channel.id)
    if plan is None:
        raise ConfigError(f"unknown channel {typed!r}: it was never imported (run `waha-pipeline import {typed}`)")
    if plan.channel_slug != channel.slug:
        raise ConfigError(f"channel {typed!r}: its latest plan was recorded under the slug {plan.channel_slug!r}, "
                          f"which now names another channel; import it again (`waha-pipeline import {typed}`)")
    return plan


async def _require_session(settings: Settings, typed: str) -> SessionInfo:
    """The WAHA session of that name on WAHA_BASE_URL, or of the channel with that slug; it must be WORKING (its
    account decides the channel). Anything else is exit 2 before anything is written."""
    async with WahaClient(settings.require_waha(), api_key=settings.waha_api_key,
                          max_response_bytes=settings.waha_max_response_bytes) as client:
        try:
            try:
                session = await client.get_session(typed)
            except WahaSessionNotFound:  # maybe a slug: of a channel the CRM knows, or one this server's sessions give
                channel = _stored_channel(settings, typed)
                session = await (session_of_channel(client, channel) if channel else find_session(client, None, typed))
            account_of(session)
        except ChannelNotPlannable as exc:
            raise ConfigError(str(exc)) from None
        except WahaSessionNotFound:
            raise
        except WahaPermanentError as exc:
            if exc.status in (401, 403):
                raise ConfigError(f"WAHA refused WAHA_API_KEY (HTTP {exc.status})") from None
            raise
    return session


def _stored_channel(settings: Settings, slug: str) -> ChannelRecord | None:
    """The channel of that slug in a CRM that already has channels with slugs; read only (a bad name creates no
    schema)."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and os.path.exists(url.database)):
        return None  # connecting would create the file
    try:
        with _store(settings) as store:
            return store.channel_by_slug(slug)
    except (sa.exc.DBAPIError, ConfigError):
        return None


def _import_target(settings: Settings, store: CrmStore, typed: str, session: SessionInfo) -> ChannelRecord:
    """The CRM channel an import of `typed` fills: (tenant, session, the account WAHA reports for the session)."""
    channel = resolve_channel(store, session, default_tenant=settings.tenant_id, waha_server=settings.require_waha())
    if typed != session.name and typed != channel.slug:
        raise ConfigError(f"channel {typed!r} is not the channel session {session.name!r} fills here "
                          f"({channel.label()}, tenant {channel.tenant_id!r}); check WAHA_TENANT_ID")
    return channel
