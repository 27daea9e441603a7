"""The README's quick start: `waha-pipeline demo` in an empty directory imports the seed-sized channel into the
embedded SQLite defaults with every chunk committed, and the CRM equals the simulator's truth by count.

SQLite takes one writer at a time, so anything that reads through a second connection while a chunk's commit holds
the write lock (names settled across chunks read the plan's chats) waits for itself: this runs the whole path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_demo_commits_every_chunk_into_the_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAHA_", "DATABASE_URL", "DAGSTER_", "IMPORT_"))}
    done = subprocess.run([str(BIN / "waha-pipeline"), "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = re.search(r"(\d+) committed, (\d+) failed, (\d+) pending; (\d+) messages committed", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    committed, failed, pending, messages = map(int, summary.groups())
    assert committed > 1 and failed == 0 and pending == 0 and messages > 5000
    crm = re.search(r"in the CRM: (\d+) messages", done.stdout)
    assert crm is not None and int(crm.group(1)) == messages
    assert (tmp_path / ".waha" / "crm.sqlite").exists() and done.stderr.strip() == ""
