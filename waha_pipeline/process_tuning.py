"""Every setting that changes a whole process (or one of our threads) for speed or memory, applied only at entries.

Library code (importer, crm, waha, domain, simulator data generation) changes no process-wide state: a process's
owner decides. The entries, and what each applies (waha_pipeline_tests/test_process_tuning.py holds the list):

- the CLI, `cli/main.py` `main()`: `tune_import_process()` for import, status, rerun-failed and demo; the imports of
  the Dagster commands run inside `long_lived()`;
- a simulator server, `simulator/server.py` `serve_forever()` (the `simulate` command) and `run_in_thread()` (the
  demo, tests): the dataset it serves is built inside `long_lived()`. `run_in_thread` runs in someone else's
  process, but that process then serves the dataset until it exits, as it did when `build_dataset` froze it;
- a Dagster run process, `CrmResource.setup_for_execution` (defs/resources.py): `tune_import_process()`. Dagster
  offers no hook where a run process starts running our code: the code location's import also runs in the
  webserver, the daemon and the code server, which import nothing; resource setup runs once per run in the run
  process (the in-process executor), before any step, and every asset needs the CRM resource. The sensor's
  evaluation sets the resource up too, outside any run (no run id), and is left as it is;
- a chunk worker process, `importer/workers.py` `_work()`: `tune_chunk_worker()`;
- the chunk workers' fork server, `importer/fork_server_entry.py`, the last module it preloads: `tune_fork_server()`;
- the WAHA fetch loop's thread, `BackgroundLoop._run` (importer/background_loop.py): `declare_asyncio_thread()`.

A dataset built by calling `build_dataset` directly (tests that serve nothing) is built with the collector as the
caller has it. Figures: docs/performance.md, "Process tuning".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import multiprocessing
import os
from collections.abc import Iterator

M_ARENA_MAX = -8  # glibc mallopt parameter
ARENAS = 2
# Imported by the chunk workers' fork server before it forks any worker; fork_server_entry must be last.
FORK_SERVER_PRELOAD = ("waha_pipeline.importer.workers", "waha_pipeline.importer.fork_server_entry")


@functools.cache
def use_lean_allocators() -> None:
    """Chunks differ a lot in size: Arrow's system pool and two glibc arenas give back what a big chunk freed,
    where Arrow's default pool and per-thread arenas keep it (call before the first frame: Arrow reads its pool
    choice once)."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # also read by the fork server started later
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())  # in case Arrow had already picked its pool
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt"):  # glibc only; elsewhere the default allocator stays
            libc.mallopt(M_ARENA_MAX, ARENAS)


def preload_chunk_workers() -> None:
    """Workers are forked from a fork server that has already imported the chunk code, so each starts in
    milliseconds (call before this process starts the server: the first worker, or `worker_server.warm_up`)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORK_SERVER_PRELOAD))


def freeze_heap() -> None:
    """What is imported so far moves out of the collector's reach, so no later collection visits (and, in a
    forked child, writes to and copies) those pages."""
    gc.freeze()


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """What is built inside lives until exit: collecting while it is built is wasted work, and frozen afterwards,
    no later collection (nor the one at interpreter exit) walks it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        freeze_heap()
    finally:
        if enabled:
            gc.enable()


def declare_asyncio_thread() -> None:
    """Call on a thread that runs nothing but an asyncio loop: sniffio then skips its per-call task lookup, which
    httpcore and anyio make several times per request."""
    import sniffio

    sniffio.thread_local.name = "asyncio"


def tune_import_process() -> None:
    """A process that plans and imports chunks (the CLI's commands but `simulate`, a Dagster run): chunk frames
    may be built here, and chunk workers are forked from here."""
    use_lean_allocators()
    preload_chunk_workers()


def tune_chunk_worker() -> None:
    """A chunk worker process builds every frame of the chunks it takes."""
    use_lean_allocators()


def tune_fork_server() -> None:
    """The fork server only forks: what it imported is shared with every worker, so none of them may write to it."""
    freeze_heap()
