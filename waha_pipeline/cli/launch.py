"""Launching plan and chunk runs against a Dagster instance, the way the CLI does it.

Runs cover contiguous ranges of chunk partitions (in the instance's insertion order) so that a channel's
chunks cost one run per range instead of one process per chunk.

Interrupts: inside a run Dagster owns SIGINT/SIGTERM (it raises DagsterExecutionInterruptedError in the step);
`Signals` counts them wherever they land, through the interpreter's wakeup fd, so that no new run starts after
the first and the second ends the process at once.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import dagster as dg

from waha_pipeline.crm.ledger import primary_message
from waha_pipeline.defs.assets import MAX_CHUNKS_PER_RUN, PlanConfig
from waha_pipeline.defs.partitions import CHANNELS, CHUNKS
from waha_pipeline.instance.runs import (
    CLI, LAUNCHED_BY_TAG, RANGE_END, RANGE_START, contiguous_ranges, run_tags,
)

INTERRUPTED = "interrupted"
INTERRUPT_CLASSES = frozenset({"DagsterExecutionInterruptedError", "KeyboardInterrupt"})
# Dagster's wrappers around the exception that caused a step to fail.
_WRAPPERS = frozenset({
    "DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError", "RetryRequestedFromPolicy",
    "RetryRequested", "DagsterMaxRetriesExceededError",
})


def console(verbose: bool) -> dict[str, Any]:
    """The CLI prints its own one line per failure; Dagster's console logger (events with stack traces) only with
    --verbose. The run's full event log is in the instance (and the UI) either way."""
    return {"loggers": {"console": {"config": {"log_level": "WARNING" if verbose else "CRITICAL"}}}}


CONSOLE_WARNINGS = console(True)


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    success: bool
    plan_id: str | None
    chunk_keys: list[str]
    error: str | None
    up_to_date: int = 0  # chats left out of the plan because nothing of theirs changed


def add_partitions(instance: dg.DagsterInstance, name: str, keys: Sequence[str]) -> None:
    existing = set(instance.get_dynamic_partitions(name))
    new = list(dict.fromkeys(k for k in keys if k not in existing))  # SQLite rejects duplicates in one call
    if new:
        instance.add_dynamic_partitions(name, new)


def run_plan(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    channel_slug: str,
    config: PlanConfig,
    waha_server: str,
    *,
    verbose: bool = True,
) -> PlannedRun:
    add_partitions(instance, CHANNELS, [channel_slug])
    result = defs.resolve_job_def("channel_plan_job").execute_in_process(
        instance=instance,
        partition_key=channel_slug,
        run_config={"ops": {"channel_plan": {"config": config.model_dump()}}, **console(verbose)},
        tags={**run_tags(channel_slug, waha_server, chunks=0), LAUNCHED_BY_TAG: CLI},
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
    *,
    verbose: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> list[dg.ExecuteInProcessResult]:
    """One in-process run per contiguous range, tagged like sensor runs (the tags matter for the UI and history;
    in-process runs are not watched by run monitoring, the per-chunk deadline bounds them instead). No run
    starts once `stop()` says so or a run was interrupted."""
    job = defs.resolve_job_def("chunk_import_job")
    results: list[dg.ExecuteInProcessResult] = []
    for keys in contiguous_ranges(instance.get_dynamic_partitions(CHUNKS), chunk_keys, MAX_CHUNKS_PER_RUN):
        if stop() or any(was_interrupted(r) for r in results):
            break
        results.append(
            job.execute_in_process(
                instance=instance,
                run_config=console(verbose),
                tags={
                    RANGE_START: keys[0],
                    RANGE_END: keys[-1],
                    **run_tags(channel_slug, waha_server, len(keys)),
                    LAUNCHED_BY_TAG: CLI,
                },
                raise_on_error=False,
            )
        )
    return results


# -- what a run's failure was, in one line ----------------------------------------------------------------------


def error_chain(error: Any) -> list[Any]:
    """A SerializableErrorInfo and its causes (or, lacking a cause, the exception it was raised while handling)."""
    chain = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.cause or error.context
    return chain


def error_line(error: Any) -> str:
    """The cause of a failure in one line: the first exception below Dagster's wrappers, its primary message."""
    chain = error_chain(error)
    if any(e.cls_name in INTERRUPT_CLASSES for e in chain):
        return INTERRUPTED
    cause = next((e for e in chain if e.cls_name not in _WRAPPERS), chain[-1] if chain else None)
    if cause is None:
        return "failed"
    message = " ".join(primary_message(cause.message or "").split())
    if not message or message == cause.cls_name:
        return cause.cls_name or "failed"
    # Dagster keeps Python's "module.Class: message"; the product's own errors read well without their class
    named = re.match(r"([\w.]*?)\b(\w+): ", message)
    if named and named.group(2) == cause.cls_name:
        message = message[named.end():] if named.group(1).startswith("waha_pipeline.") else \
            f"{cause.cls_name}: {message[named.end():]}"
    return message if len(message) <= 500 else message[:499] + "…"


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """A step or the run ended on SIGINT/SIGTERM (retried or not)."""
    for event in result.all_events:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None and any(e.cls_name in INTERRUPT_CLASSES for e in error_chain(error)):
            return True
        if event.is_step_failure and event.step_failure_data.error_source.value == "INTERRUPT":
            return True
    return False


def chunk_failures(results: Iterable[dg.ExecuteInProcessResult]) -> dict[str, tuple[str, str]]:
    """chunk key -> (stage, reason) of the chunks the runs' steps reported failed (the last report wins)."""
    failures: dict[str, tuple[str, str]] = {}
    for result in results:
        for event in result.all_events:
            if not (event.is_step_failure or event.is_step_up_for_retry):
                continue
            user = getattr(event.event_specific_data, "user_failure_data", None)
            value = user.metadata.get("failed_chunks") if user is not None and user.metadata else None
            for item in (value.value if value is not None else None) or []:
                failures[str(item["chunk"])] = (str(item["stage"]), str(item["reason"]))
    return failures


def run_errors(results: Iterable[dg.ExecuteInProcessResult]) -> list[str]:
    """One line per failed step that was not a report of failed chunks (e.g. the CRM unreachable, a worker lost)."""
    lines = []
    for result in results:
        for event in result.all_events:
            if not event.is_step_failure:
                continue
            data = event.step_failure_data
            user = data.user_failure_data
            if user is not None and user.metadata and "failed_chunks" in user.metadata:
                continue
            if data.error is not None:
                lines.append(f"run {result.run_id[:8]} failed: {error_line(data.error)}")
    return lines


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return error_line(event.step_failure_data.error)
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if event.is_run_failure and error is not None:
            return error_line(error)
    return INTERRUPTED if was_interrupted(result) else "run failed"


# -- signals ------------------------------------------------------------------------------------------------------


class Signals:
    """SIGINT/SIGTERM while an import runs: the first stops it at the next chunk boundary (outside a Dagster run it
    raises KeyboardInterrupt; inside one Dagster raises its interrupt in the step), the second ends the process
    at once (workers follow their parent, PostgreSQL rolls back and drops its connections, pending chunks are
    visible and re-run by `rerun-failed`).

    Counted through the interpreter's wakeup fd, which the C-level handler writes to for every signal with a
    Python handler, whichever handler Dagster has swapped in at that moment."""

    WATCHED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_second: Callable[[], None] | None = None) -> None:
        self.count = 0
        self._on_second = on_second
        self._saved: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def __call__(self) -> bool:
        return self.count > 0

    def __enter__(self) -> Signals:
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in self.WATCHED:
            self._saved[signum] = signal.signal(signum, self._raise)
        threading.Thread(target=self._watch, args=(read,), name="signal-watch", daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._pipe is None:
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._pipe[1])  # the watcher reads EOF and ends
        self._pipe = None

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def _watch(self, read: int) -> None:
        try:
            while data := os.read(read, 64):
                for signum in data:
                    if signum not in self.WATCHED:
                        continue
                    self.count += 1
                    if self.count == 1:
                        _say("stopping: no new chunk starts; a second signal stops at once")
                    else:
                        if self._on_second is not None:
                            self._on_second()
                        _say("stopped at once")
                        os._exit(1)
        finally:
            os.close(read)


def _say(line: str) -> None:
    try:
        print(f"waha-pipeline: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
