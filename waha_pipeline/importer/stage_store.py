"""Per-chunk stage outputs as Parquet, so a later stage can be re-executed without fetching from WAHA again.

Files live under `<root>/<plan_id>/<chunk_key>/<name>.parquet`; a new plan (new window) never reads an old
plan's files. Writes go to a temporary name first and are renamed, so a killed process leaves no torn file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd


class StageStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, plan_id: str, chunk_key: str, name: str) -> Path:
        return self.root / plan_id / chunk_key / f"{name}.parquet"

    def write(self, plan_id: str, chunk_key: str, name: str, frame: pd.DataFrame) -> None:
        path = self._path(plan_id, chunk_key, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)

    def read(self, plan_id: str, chunk_key: str, name: str) -> pd.DataFrame | None:
        path = self._path(plan_id, chunk_key, name)
        if not path.exists():
            return None
        return pd.read_parquet(path)

    def drop_plan_except(self, channel_plan_ids: set[str], keep: str) -> None:
        """Delete stage files of a channel's older plans; they can never be read again."""
        for plan_id in channel_plan_ids - {keep}:
            shutil.rmtree(self.root / plan_id, ignore_errors=True)

    def exists(self, plan_id: str, chunk_key: str, name: str) -> bool:
        return self._path(plan_id, chunk_key, name).exists()
