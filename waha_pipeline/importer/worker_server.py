"""The fork server chunk worker processes start from (importer/workers.py).

Light on purpose: the CLI starts the server first thing, so its imports of the chunk code (pandas, pyarrow,
SQLAlchemy, httpx: ~2 s) run on the other core while the CLI imports Dagster, and every worker forked later
starts in milliseconds with them done, without the threads of the process that asked for it. What it preloads is
set at the process's entry (process_tuning.preload_chunk_workers), before the server starts.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver

CONTEXT = mp.get_context("forkserver")


def warm_up() -> None:
    """Start the server now; returns at once (the first fork waits for the server's imports)."""
    forkserver.ensure_running()
