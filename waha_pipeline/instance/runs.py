"""A channel's runs in the instance. The tags every import run carries: its channel, its WAHA server, a runtime
bound sized from its chunks and crash-only run retries. The root dagster.yaml turns the channel tag into a queue limit (one run per channel) and
the runtime into a run-monitoring timeout; CLI runs, sensor runs and documented automation all use `run_tags`.
The WAHA server's limit is a concurrency pool (`waha_pool`), which holds for runs without these tags too. Chunk
runs cover contiguous partition ranges; `other_runs_in_progress` tells whose pending chunks are live.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import dagster as dg

CHANNEL_TAG = "waha_pipeline/channel"
WAHA_SERVER_TAG = "waha_pipeline/waha_server"
MAX_RUNTIME_TAG = "dagster/max_runtime"
MAX_RETRIES_TAG = "dagster/max_retries"
RETRY_ON_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
# Runs the CLI executes in its own process; their liveness is the channel's import lock (CrmStore.import_lock),
# not their status in the instance (a killed CLI leaves them STARTED for good).
LAUNCHED_BY_TAG = "waha_pipeline/launched_by"
CLI = "cli"

# Fixed cost of a run before its first chunk: process start, resource setup (a no-op CRM migration), plan read.
RUN_BASE_SECONDS = 600
# Budget of one chunk (<= 50 chats): WAHA paging with retries and backoff, mapping, one commit.
CHUNK_BUDGET_SECONDS = 180
# A run that crashed (process killed, node lost) is retried once; a run whose chunks failed is not, because the
# step RetryPolicy already retried it and a run retry would redo the whole range.
CRASH_RETRIES = 1


def max_runtime_seconds(chunks: int) -> int:
    """Base + chunks x per-chunk budget; a plan run (0 chunks) gets the base alone."""
    return RUN_BASE_SECONDS + max(0, chunks) * CHUNK_BUDGET_SECONDS


def waha_server_label(base_url: str) -> str:
    """`host:port` of a WAHA base URL, without scheme, credentials or path (it is shown in the UI)."""
    parts = urlsplit(base_url)
    host = parts.hostname or "unknown"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def waha_pool(base_url: str | None) -> str:
    """The Dagster concurrency pool of a WAHA server: `waha/host:port` (`waha` while no server is configured).
    Its limit (dagster.yaml `concurrency.pools`, or `dagster instance concurrency set`) bounds the steps that
    call that server at once across all runs: sensor runs, UI backfills and CLI imports alike."""
    return f"waha/{waha_server_label(base_url)}" if base_url else "waha"


def run_tags(channel_slug: str, waha_server: str, chunks: int) -> dict[str, str]:
    """Tags for a run of `channel_slug` covering `chunks` chunks against `waha_server` (a label or a URL)."""
    server = waha_server_label(waha_server) if "://" in waha_server else waha_server
    return {
        CHANNEL_TAG: channel_slug,
        WAHA_SERVER_TAG: server,
        MAX_RUNTIME_TAG: str(max_runtime_seconds(chunks)),
        MAX_RETRIES_TAG: str(CRASH_RETRIES),
        RETRY_ON_FAILURE_TAG: "false",
    }


def contiguous_ranges(ordered: Sequence[str], wanted: Sequence[str], max_len: int) -> list[list[str]]:
    """Split `wanted` into runs of keys adjacent in `ordered`, at most `max_len` each."""
    wanted_set = set(wanted)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted_set and len(current) < max_len:
            current.append(key)
            continue
        if current:
            ranges.append(current)
        current = [key] if key in wanted_set else []
    if current:
        ranges.append(current)
    return ranges


def other_runs_in_progress(instance: dg.DagsterInstance, channel_slug: str) -> list[str]:
    """Ids of the channel's runs in progress that the CLI did not launch (sensor, UI, backfill runs): their
    pending chunks are live. CLI runs are left out, their liveness is the import lock."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=IN_PROGRESS, tags={CHANNEL_TAG: channel_slug})
    )
    return [r.dagster_run.run_id for r in records if r.dagster_run.tags.get(LAUNCHED_BY_TAG) != CLI]
