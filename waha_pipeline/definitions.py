"""Code-location entry (workspace.yaml): the Definitions the webserver and the daemon load, with the catch-up
cadence and the WAHA server's pool as the environment gives them when the location loads."""

from __future__ import annotations

from waha_pipeline.defs.location import build_definitions

__all__ = ["build_definitions", "defs"]

defs = build_definitions()
