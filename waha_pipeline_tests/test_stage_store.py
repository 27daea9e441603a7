"""Pins the stage files: atomic round trip, per-plan isolation, pruning of a channel's older plans only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from waha_pipeline.importer.stage_store import StageStore


def test_round_trip_isolation_and_prune(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    frame = pd.DataFrame({"chat_id": pd.array(["1@c.us", None], dtype="string"), "n": [1, 2]})
    store.write("plan-a", "acme.c0000", "fetched", frame)
    store.write("plan-b", "acme.c0000", "fetched", frame.head(1))
    store.write("plan-x", "other.c0000", "fetched", frame)

    pd.testing.assert_frame_equal(store.read("plan-a", "acme.c0000", "fetched"), frame)
    assert len(store.read("plan-b", "acme.c0000", "fetched")) == 1
    assert store.read("plan-a", "acme.c0001", "fetched") is None
    assert not list(tmp_path.rglob("*.tmp*"))

    store.prune("acme", keep_plan_id="plan-b")
    assert not store.exists("plan-a", "acme.c0000", "fetched")
    assert store.exists("plan-b", "acme.c0000", "fetched")
    assert store.exists("plan-x", "other.c0000", "fetched"), "another channel's files are not touched"
