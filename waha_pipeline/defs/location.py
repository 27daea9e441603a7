"""The one place that builds the Definitions the UI, the daemon and the CLI all use (waha_pipeline.definitions is
the code location's entry; importing this module builds nothing)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dagster as dg

from waha_pipeline.defs.assets import import_assets
from waha_pipeline.defs.jobs import channel_plan_job, chunk_import_job
from waha_pipeline.defs.resources import CrmResource, WahaResource
from waha_pipeline.instance.runs import waha_pool
from waha_pipeline.defs.sensors import build_session_sensor
from waha_pipeline.settings import CatchUp, parse_waha_url


def build_definitions(
    waha: WahaResource | None = None,
    crm: CrmResource | None = None,
    catchup: CatchUp | None = None,
    clock: Callable[[], float] = time.time,
) -> dg.Definitions:
    """`catchup` defaults to WAHA_CATCHUP_MINUTES / WAHA_CATCHUP_DEEP_HOURS as the environment has them now; the
    assets' concurrency pool is that of the WAHA server `waha` names, else WAHA_BASE_URL's."""
    waha = waha or WahaResource()
    channel_plan, chunk_import = import_assets(waha_pool(waha.base_url or parse_waha_url(os.environ.get("WAHA_BASE_URL"))))
    return dg.Definitions(
        assets=[channel_plan, chunk_import],
        jobs=[channel_plan_job, chunk_import_job],
        sensors=[build_session_sensor(catchup or CatchUp.from_env(), clock)],
        resources={"waha": waha, "crm": crm or CrmResource()},
        # UI backfills run the implicit asset job with this executor: no process per step.
        executor=dg.in_process_executor,
    )

