"""The fork server chunk worker processes start from (importer/workers.py).

Light on purpose: the CLI starts the server first thing, so its imports of the chunk code (pandas, pyarrow,
SQLAlchemy, httpx: ~2 s) run on the other core while the CLI imports Dagster, and every worker forked later
starts in milliseconds with them done, without the threads of the process that asked for it.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver

CONTEXT = mp.get_context("forkserver")
CONTEXT.set_forkserver_preload(["waha_pipeline.importer.workers", "waha_pipeline.importer.frozen_heap"])


def warm_up() -> None:
    """Start the server now; returns at once (the first fork waits for the server's imports)."""
    forkserver.ensure_running()
