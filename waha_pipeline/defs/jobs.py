"""Jobs: planning a channel, and importing a range of its chunks."""

from __future__ import annotations

import dagster as dg

from waha_pipeline.defs.assets import channel_plan, chunk_import

channel_plan_job = dg.define_asset_job("channel_plan_job", selection=dg.AssetSelection.assets(channel_plan))
chunk_import_job = dg.define_asset_job("chunk_import_job", selection=dg.AssetSelection.assets(chunk_import))
