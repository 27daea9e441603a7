"""The asset graph shows where chunks come from: the channel plan is upstream of the chunk chain.

Read through Dagster's public API from the code location the UI and the daemon load (waha_pipeline.definitions),
so a spec edit that drops the edge, or gives it a mapping Dagster rejects between the two partition sets, fails here.
"""

from __future__ import annotations

from itertools import pairwise

import dagster as dg

from waha_pipeline.definitions import defs
from waha_pipeline.defs.assets import chunk_import
from waha_pipeline.defs.partitions import CHANNELS, CHUNKS
from waha_pipeline.importer.stage_actions import STAGES


def _specs() -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.resolve_all_asset_specs()}


def test_channel_plan_is_the_parent_of_the_chunk_chain() -> None:
    dg.Definitions.validate_loadable(defs)  # partition mappings included
    specs = _specs()
    first = specs[dg.AssetKey(STAGES[0])]
    assert {dep.asset_key: dep.partition_mapping for dep in first.deps} == {
        dg.AssetKey("channel_plan"): dg.AllPartitionMapping()
    }
    # the rest of the chain hangs below raw_chat_list, one stage after the other, on the chunk partitions
    for parent, child in pairwise(STAGES):
        assert [dep.asset_key for dep in specs[dg.AssetKey(child)].deps] == [dg.AssetKey(parent)]
    assert not specs[dg.AssetKey("channel_plan")].deps


def test_the_edge_joins_channel_partitions_to_chunk_partitions() -> None:
    specs = _specs()
    plan, first = specs[dg.AssetKey("channel_plan")], specs[dg.AssetKey(STAGES[0])]
    assert isinstance(plan.partitions_def, dg.DynamicPartitionsDefinition) and plan.partitions_def.name == CHANNELS
    assert isinstance(first.partitions_def, dg.DynamicPartitionsDefinition) and first.partitions_def.name == CHUNKS
    assert chunk_import.asset_deps[dg.AssetKey(STAGES[0])] == {dg.AssetKey("channel_plan")}
    assert chunk_import.get_partition_mapping(dg.AssetKey("channel_plan")) == dg.AllPartitionMapping()
