"""Jobs: planning a channel, and importing a range of its chunks (selected by asset key, so they hold whichever
definitions of those assets the code location carries, pool included)."""

from __future__ import annotations

import dagster as dg

from waha_pipeline.importer.stage_actions import STAGES

channel_plan_job = dg.define_asset_job("channel_plan_job", selection=dg.AssetSelection.assets("channel_plan"))
chunk_import_job = dg.define_asset_job("chunk_import_job", selection=dg.AssetSelection.assets(*STAGES))
