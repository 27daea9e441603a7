"""A run's chunks spread over worker processes, so chunk work uses every core instead of the one the GIL allows.

Each worker runs an ordinary ChunkRunner, asking the parent for its next chunk key whenever it has room for one
(so a worker stuck with a huge chunk does not leave the other idle at the end), and streams its events back; the
parent yields them as they arrive, so the Dagster step still logs one event per (stage, chunk). Commits of one
channel take a channel lock (crm/commit.py), so they happen one at a time as in a single process; fetching,
parsing and session assignment overlap.

Workers are forked by a fork server that has imported this module once (importer/worker_server.py), so they start
in milliseconds and never inherit the threads of a Dagster process; they get everything they need as plain values.
A worker exits as soon as its parent is gone (it watches a pipe only the parent holds open), so a killed import
leaves no process committing behind its back; a worker that dies fails only the chunks it held, transiently.

A worker's own log records at WARNING and above (WAHA retries, an open circuit, a failed chunk) travel the same pipe
and are logged again in the parent under their logger's name, tagged with the worker's name: in a Dagster run the
managed Python loggers (dagster.yaml `python_logs`) put them in the run's event log, as they do with the parent's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.chunk_runner import ChunkFailed, ChunkRunner, StageDone, one_line
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.importer.worker_server import CONTEXT
from waha_pipeline.process_tuning import tune_chunk_worker
from waha_pipeline.waha.client import WahaClient

logger = logging.getLogger(__name__)

STOP_SECONDS = 10.0
PACKAGE_LOGGER = __name__.partition(".")[0]  # the logger dagster.yaml names in managed_python_loggers
FORWARDED_LEVEL = logging.WARNING  # what a worker forwards: no INFO traffic per chunk or page


@dataclass(frozen=True)
class RunnerSpec:
    """What a worker needs to build its ChunkRunner. Secrets stay out of repr (and so out of any error text)."""

    database_url: str = field(repr=False)
    crm_commit_timeouts: tuple[float, float]  # (lock, statement) seconds (CRM_*_TIMEOUT_SECONDS)
    stage_root: str = field(repr=False)  # a URL may carry credentials
    waha_base_url: str = field(repr=False)
    waha_api_key: str | None = field(repr=False)
    waha_concurrency: int
    waha_max_response_bytes: int  # WAHA_MAX_RESPONSE_MB
    page_size: int
    fetch_deadline_seconds: float
    prefetch: int  # chunks fetched ahead of the one being worked on
    max_chunk_bytes: int  # fetched JSON text one chunk may hold (IMPORT_CHUNK_MAX_MB)

    def runner(self, store: CrmStore | None = None) -> ChunkRunner:
        """A runner on `store`, or on a store of its own (a worker process)."""
        return ChunkRunner(
            store or CrmStore.from_url(self.database_url, self.crm_commit_timeouts),
            StageStore(self.stage_root),
            self.client,
            page_size=self.page_size,
            fetch_deadline_seconds=self.fetch_deadline_seconds,
            prefetch=self.prefetch,
            max_chunk_bytes=self.max_chunk_bytes,
        )

    def client(self) -> WahaClient:
        return WahaClient(self.waha_base_url, api_key=self.waha_api_key, concurrency=self.waha_concurrency,
                          max_response_bytes=self.waha_max_response_bytes)


class ChunkWorkerError(RuntimeError):
    """A worker failed outside any one chunk (e.g. the CRM was unreachable); the step fails and is retried."""


@dataclass(frozen=True)
class _Want:
    """A worker asks for its next chunk key (answered with a key, or None when none are left)."""


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Crashed:
    reason: str


@dataclass(frozen=True)
class _Log:
    """A log record of a worker, as text: records can hold unpicklable arguments and tracebacks."""

    name: str
    level: int
    message: str  # formatted, with the traceback if any
    worker: str  # the worker's process name


class _Outbox:
    """The worker's end of its events pipe. Log records come from any thread (the WAHA client logs on the fetch
    loop's thread) while the chunk loop sends events, and a Connection must not have two senders at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            self._conn.send(message)


class _ForwardLogs(logging.Handler):
    def __init__(self, outbox: _Outbox) -> None:
        super().__init__(FORWARDED_LEVEL)
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._outbox.send(_Log(record.name, record.levelno, self.format(record), record.processName or "worker"))
        except OSError:  # the parent is gone; this worker follows it out (_exit_with_parent)
            pass
        except Exception:  # noqa: BLE001 - logging must not break the chunk loop
            self.handleError(record)


@dataclass
class _Worker:
    process: BaseProcess
    events: Connection
    orders: Connection  # chunk keys, one per _Want
    lifeline: Connection  # never written; closing it (or dying) tells the worker to stop
    keys: list[str] = field(default_factory=list)  # handed to it so far
    reached: dict[str, str] = field(default_factory=dict)  # chunk -> last stage it completed
    ended: set[str] = field(default_factory=set)
    finished: bool = False  # it said it was done (or crashed): let it exit on its own

    def track(self, event: StageDone | ChunkFailed, final_stage: str) -> None:
        if isinstance(event, ChunkFailed) or event.stage == final_stage:
            self.ended.add(event.chunk_key)
        else:
            self.reached[event.chunk_key] = event.stage

    def lost(self) -> list[ChunkFailed]:
        """The chunks a dead worker left unfinished, failed at the stage after the last one it reported."""
        self.process.join(STOP_SECONDS)
        reason = f"chunk worker process {self.process.pid} exited (code {self.process.exitcode}) before finishing"
        failed = []
        for key in self.keys:
            if key not in self.ended:
                done = self.reached.get(key)
                stage = STAGES[STAGES.index(done) + 1] if done else STAGES[0]
                failed.append(ChunkFailed(key, stage, reason, permanent=False))
        return failed

    def stop(self) -> None:
        if self.finished:
            self.process.join(STOP_SECONDS)
        for conn in (self.lifeline, self.orders, self.events):
            conn.close()
        self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_SECONDS)


def run_in_workers(
    spec: RunnerSpec,
    store: CrmStore,
    chunk_keys: list[str],
    selected: set[str],
    *,
    workers: int,
    skip_committed: bool = False,
) -> Iterator[StageDone | ChunkFailed]:
    """Like ChunkRunner.run over `chunk_keys`, on `workers` processes that take the next key whenever they have
    room for one (chunk sizes vary a lot). `store` marks a dead worker's unfinished chunks failed."""
    final_stage = [s for s in STAGES if s in selected][-1]
    queue = deque(chunk_keys)
    started = [_start(spec, n, selected, skip_committed) for n in range(min(workers, len(chunk_keys)))]
    crashes: list[str] = []
    try:
        live = {w.events: w for w in started}
        while live:
            for conn in wait(list(live)):
                worker = live[conn]
                try:
                    message = conn.recv()
                except EOFError:
                    del live[conn]
                    for failure in worker.lost():
                        logger.warning("chunk %s failed: %s", failure.chunk_key, failure.reason)
                        if final_stage == "committed_rows":
                            _mark_failed(store, failure)
                        yield failure
                    continue
                if isinstance(message, _Want):
                    key = queue.popleft() if queue else None
                    if key is not None:
                        worker.keys.append(key)
                    worker.orders.send(key)
                elif isinstance(message, _Log):
                    _relog(message)
                elif isinstance(message, (_Done, _Crashed)):
                    del live[conn]
                    worker.finished = True
                    if isinstance(message, _Crashed):
                        crashes.append(message.reason)
                else:
                    worker.track(message, final_stage)
                    yield message
    finally:
        for worker in started:
            worker.stop()
    if crashes:
        raise ChunkWorkerError("; ".join(crashes))


def _start(spec: RunnerSpec, number: int, selected: set[str], skip_committed: bool) -> _Worker:
    events_out, events_in = CONTEXT.Pipe(duplex=False)
    orders_out, orders_in = CONTEXT.Pipe(duplex=False)
    lifeline_out, lifeline_in = CONTEXT.Pipe(duplex=False)
    process = CONTEXT.Process(
        target=_work,
        args=(spec, selected, skip_committed, events_in, orders_out, lifeline_out),
        name=f"chunk-worker-{number}",
        daemon=True,
    )
    process.start()
    for end in (events_in, orders_out, lifeline_out):  # the worker holds the only other ends now
        end.close()
    return _Worker(process, events_out, orders_in, lifeline_in)


def _relog(log: _Log) -> None:
    """Under the worker's logger name, so that whatever handles this process's records (in a run: Dagster's
    managed loggers) handles the worker's too. Where nothing does (an instance config without `python_logs`),
    they are dropped rather than printed by logging's last-resort handler: the CLI keeps workers' stderr quiet."""
    target = logging.getLogger(log.name)
    if target.isEnabledFor(log.level) and target.hasHandlers():
        target.handle(target.makeRecord(log.name, log.level, "", 0, "%s [%s]", (log.message, log.worker), None))


def _mark_failed(store: CrmStore, failure: ChunkFailed) -> None:
    found = store.latest_chunk(failure.chunk_key)
    if found is not None:  # a chunk the worker had committed keeps its status (mark_chunk_failed)
        store.mark_chunk_failed(found[0].id, failure.chunk_key, failure.reason)


def _work(
    spec: RunnerSpec,
    selected: set[str],
    skip_committed: bool,
    events: Connection,
    orders: Connection,
    lifeline: Connection,
) -> None:
    tune_chunk_worker()  # this process's entry
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="parent-watch", daemon=True).start()
    outbox = _Outbox(events)
    forward = _ForwardLogs(outbox)
    logging.getLogger(PACKAGE_LOGGER).addHandler(forward)
    runner = spec.runner()
    try:
        for event in runner.run(_orders(outbox, orders), selected, skip_committed=skip_committed):
            outbox.send(event)
        outbox.send(_Done())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the step with it
        outbox.send(_Crashed(f"{type(exc).__name__}: {one_line(exc)}"))
    finally:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(forward)  # the parent stops reading after _Done
        runner.store.dispose()


def _orders(events: _Outbox, orders: Connection) -> Iterator[str]:
    while True:
        events.send(_Want())
        key = orders.recv()
        if key is None:
            return
        yield key


def _exit_with_parent(lifeline: Connection) -> None:
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)  # an open transaction is rolled back by PostgreSQL when the connection drops
