"""What the scenarios run against: the simulator process, the code under test, PostgreSQL databases, child processes.

Kept apart from the scenarios so that other harnesses (bench/catchup.py) start the same simulator and read the
same databases.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Protocol

import psycopg
from sampling import proc_cpu, rss_mb

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
WAHA = str(VENV_BIN / "waha-pipeline")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0]
SIM_START_TIMEOUT_S = 600.0
CHANNEL = "demo"
# Tables whose content must not change on a rerun, and columns that legitimately move (timestamps of writes).
CRM_TABLES = ("contacts", "sessions", "messages", "message_rejects")
LEDGER_TABLES = ("channels", "import_plans", "import_chunks")
VOLATILE_COLUMNS = {"created_at", "updated_at", "committed_at"}

CHILDREN: set[subprocess.Popen] = set()  # killed on exit
CODE_ENV: dict[str, str] = {}  # PYTHONPATH of a `--code REF` snapshot, for the simulator and import processes


class SimulatedChannel(Protocol):
    name: str
    chats: int
    messages: int
    seed: int
    engine: str


# ----------------------------------------------------------------------------------------------- simulator
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Simulator:
    """`waha-pipeline simulate` as a separate process (its own session, killed with its group)."""

    def __init__(self, sc: SimulatedChannel, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"sim-{sc.name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [WAHA, "simulate", "--port", str(self.port), "--seed", str(sc.seed), "--chats", str(sc.chats),
               "--messages", str(sc.messages), "--session", CHANNEL, "--engine", sc.engine]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_")}
        env.update(CODE_ENV)
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                     start_new_session=True)
        CHILDREN.add(self.proc)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}; see {self.log_path}")
            try:
                http("GET", f"{self.url}/ping", timeout=2)
                break
            except OSError:
                if time.monotonic() - started > SIM_START_TIMEOUT_S:
                    raise RuntimeError(f"simulator did not answer /ping in {SIM_START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.2)
        self.startup_s = time.monotonic() - started
        self.rss_mb = rss_mb(self.proc.pid)

    def configure(self, latency_ms: float, jitter_ms: float, max_concurrent: int | None) -> dict:
        return http("POST", f"{self.url}/_sim/faults", {"latency_ms": latency_ms, "jitter_ms": jitter_ms,
                                                        "max_concurrent": max_concurrent or 0})

    def reset_stats(self) -> None:
        http("POST", f"{self.url}/_sim/reset-stats", {})

    def stats(self) -> dict:
        return http("GET", f"{self.url}/_sim/stats")

    def total_requests(self) -> int:
        return int(http("GET", f"{self.url}/_sim/stats", timeout=5).get("total", 0))

    def dataset(self) -> dict:
        return http("GET", f"{self.url}/_sim/dataset")

    def truth(self, window_start: int | None, window_end: int, plan_time: int) -> dict:
        q = f"session={CHANNEL}&window_end={window_end}&plan_time={plan_time}"
        if window_start is not None:
            q += f"&window_start={window_start}"
        return http("GET", f"{self.url}/_sim/truth?{q}", timeout=600)

    def cpu(self) -> float:
        c = proc_cpu(self.proc.pid)
        return c[0] if c else float("nan")

    def stop(self) -> None:
        terminate(self.proc)
        CHILDREN.discard(self.proc)
        self.log.close()


def snapshot_code(ref: str, workdir: Path) -> dict:
    """Export waha_pipeline/ at `ref` into workdir and import it from there (PYTHONPATH precedes the editable
    install's finder), so that a benchmark is not disturbed by edits made to the working tree meanwhile."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    dest = workdir / f"code-{commit[:10]}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit, "waha_pipeline"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    CODE_ENV["PYTHONPATH"] = str(dest)
    return {"ref": ref, "commit": commit, "path": str(dest)}


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the process and anything it started
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


# ----------------------------------------------------------------------------------------------- database
def db_url(name: str) -> str:
    return f"{PG_BASE}/{name}"


def recreate_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_db(name: str) -> None:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        print(f"warning: could not drop {name}: {exc}", file=sys.stderr)


def crm_counts(url: str) -> dict:
    """Rows of each CRM table, and the committed chunks of the latest plan (0 for a CRM without a ledger)."""
    plan_sql = ("SELECT count(*) FROM import_chunks WHERE status = 'committed' AND plan_id = "
                "(SELECT id FROM import_plans ORDER BY plan_time DESC, created_at DESC LIMIT 1)")
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            out = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in CRM_TABLES}
            out["chunks_committed"] = conn.execute(plan_sql).fetchone()[0]
        return out
    with psycopg.connect(url) as conn:
        out = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in CRM_TABLES}
        out["chunks_committed"] = conn.execute(plan_sql).fetchone()[0]
    return out


def crm_snapshot(name: str) -> dict:
    """Row counts, a content checksum per CRM table (volatile write-time columns excluded) and the cumulative
    tuple counters of pg_stat_user_tables (inserted / updated / deleted)."""
    out: dict = {}
    with psycopg.connect(db_url(name)) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        for table in CRM_TABLES + LEDGER_TABLES:
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s ORDER BY ordinal_position", (table,))]
            if not cols:
                continue
            kept = [c for c in cols if c not in VOLATILE_COLUMNS]
            row = ", ".join(f'"{c}"' for c in kept)
            # order-independent: the md5 of the sorted per-row md5s (json columns have no ordering operator)
            count, digest = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
                f'FROM (SELECT md5(ROW({row})::text) AS h FROM "{table}") AS t').fetchone()
            ins, upd, dele = conn.execute(
                "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE schemaname = 'public' AND relname = %s",
                (table,)).fetchone() or (0, 0, 0)
            out[table] = {"rows": count, "md5": digest, "ins": ins, "upd": upd, "del": dele,
                          "excluded": sorted(set(cols) & VOLATILE_COLUMNS)}
    return out


SNAP_SCHEMA = "bench_snap"


def copy_crm_tables(name: str) -> None:
    """Copy the CRM tables into schema bench_snap (outside the timed window) so that changed rows can be shown."""
    with psycopg.connect(db_url(name), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SNAP_SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SNAP_SCHEMA}")
        for table in CRM_TABLES:
            conn.execute(f'CREATE TABLE {SNAP_SCHEMA}."{table}" AS TABLE public."{table}"')


def changed_rows(name: str, tables: list[str], limit: int = 5) -> dict:
    """Rows that differ between bench_snap.<t> and public.<t> (volatile columns excluded): count, the columns
    that differ, and a few examples (before / after)."""
    out: dict = {}
    with psycopg.connect(db_url(name)) as conn:
        for table in tables:
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s ORDER BY ordinal_position", (table,))]
            kept = [c for c in cols if c not in VOLATILE_COLUMNS and c != "id"]
            diff_where = " OR ".join(f'b."{c}" IS DISTINCT FROM a."{c}"' for c in kept)
            base = (f'FROM {SNAP_SCHEMA}."{table}" b FULL JOIN public."{table}" a ON a.id = b.id '
                    f"WHERE a.id IS NULL OR b.id IS NULL OR {diff_where}")
            count = conn.execute(f"SELECT count(*) {base}").fetchone()[0]
            col_counts = {c: n for c, n in zip(kept, conn.execute(
                "SELECT " + ", ".join(f'count(*) FILTER (WHERE b."{c}" IS DISTINCT FROM a."{c}")' for c in kept)
                + f" {base}").fetchone()) if n}
            examples = conn.execute(
                f"SELECT row_to_json(b)::text, row_to_json(a)::text {base} LIMIT {limit}").fetchall()
            out[table] = {"rows": count, "columns": col_counts,
                          "examples": [{"before": json.loads(x) if x else None, "after": json.loads(y) if y else None}
                                       for x, y in examples]}
        plans = conn.execute("SELECT plan_time, window_start, window_end, session_timeout_minutes FROM import_plans "
                             "ORDER BY plan_time").fetchall()
        out["plans"] = [[str(v) for v in p] for p in plans]
    return out


def snapshot_diff(before: dict, after: dict) -> dict:
    diff = {}
    for table, a in after.items():
        b = before.get(table, {"rows": 0, "md5": None, "ins": 0, "upd": 0, "del": 0})
        diff[table] = {"rows_before": b["rows"], "rows_after": a["rows"], "same_content": a["md5"] == b["md5"],
                       "inserted": a["ins"] - b["ins"], "updated": a["upd"] - b["upd"], "deleted": a["del"] - b["del"]}
    return diff


def wait_stats_flushed(name: str, seconds: float = 2.0) -> None:
    """PG15 backends flush their table counters when idle / at exit; the importer has exited, give the
    stats system a moment."""
    time.sleep(seconds)
