"""The only place the partition definitions exist: their names are the contract with the Dagster instance."""

from __future__ import annotations

import dagster as dg

CHANNELS = "channels"
CHUNKS = "chunks"

# Keys: the channel slug ("acme-sales"), never a raw WAHA name (SPEC §7).
channel_partitions = dg.DynamicPartitionsDefinition(name=CHANNELS)
# Keys: "{channel_slug}.c{k:04d}"; one 1-D definition so that only real chunks exist in the UI.
chunk_partitions = dg.DynamicPartitionsDefinition(name=CHUNKS)
