#!/usr/bin/env python
"""Benchmark harness: times the real `waha-pipeline import` process against the simulator and PostgreSQL.

    /tmp/venv/bin/python bench/run.py [seed|scale|rerun|growth ...] [--quick] [--growth-sizes 1000,10000]

Every scenario starts `waha-pipeline simulate` as a separate process, configures its latency / concurrency
through POST /_sim/faults, creates a fresh PostgreSQL database and a fresh DAGSTER_HOME, and runs
`waha-pipeline import demo` as a child process. See bench/README.md for what each figure means.
Prints a table and writes bench/results/<timestamp>.json. Needs only the stdlib, psycopg and dagster (both
dependencies of the project); it reads /proc instead of psutil.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
WAHA = str(VENV_BIN / "waha-pipeline")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0]
CLK_TCK = os.sysconf("SC_CLK_TCK")
IMPORT_TIMEOUT_S = float(os.environ.get("BENCH_IMPORT_TIMEOUT_S", 30 * 60))
SIM_START_TIMEOUT_S = 600.0
CHANNEL = "demo"
# Tables whose content must not change on a rerun, and columns that legitimately move (timestamps of writes).
CRM_TABLES = ("contacts", "sessions", "messages", "message_rejects")
LEDGER_TABLES = ("channels", "import_plans", "import_chunks")
VOLATILE_COLUMNS = {"created_at", "updated_at", "committed_at"}


# ----------------------------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    name: str
    chats: int
    messages: int
    days: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    max_concurrent: int | None = None
    seed: int = 7
    rerun: bool = False
    engine: str = "gows"  # the simulator's WAHA engine profile
    extra: dict = field(default_factory=dict)


def build_scenarios(names: list[str], quick: bool, growth_sizes: list[int] | None) -> list[Scenario]:
    want_rerun = "rerun" in names
    picked = [n for n in names if n != "rerun"]
    if want_rerun and not any(n in ("seed", "scale") for n in picked):
        picked = ["seed", "scale"] + picked  # `rerun` alone = the seed and scale imports, each run twice
    out: list[Scenario] = []
    for name in dict.fromkeys(picked):
        if name == "seed":
            # 100 ms +/- 10 ms: the simulator adds uniform(0, jitter) on top of latency, so 90 + U(0, 20).
            chats, msgs = (200, 1000) if quick else (1176, 5700)
            out.append(Scenario("seed", chats, msgs, days=0, latency_ms=90, jitter_ms=20, max_concurrent=50,
                                rerun=want_rerun))
        elif name == "scale":
            chats, msgs = (1000, 50_000) if quick else (10_000, 1_000_000)
            out.append(Scenario("scale", chats, msgs, days=365, rerun=want_rerun))
        elif name == "growth":
            sizes = growth_sizes or ([1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000])
            for m in sizes:
                out.append(Scenario(f"growth-{_short(m)}", max(20, m // 100), m, days=0))  # sim needs >= 16 chats
        else:
            raise SystemExit(f"unknown scenario {name!r} (seed, scale, rerun, growth)")
    return out


def _short(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


# ----------------------------------------------------------------------------------------------- /proc
def proc_cpu(pid: int) -> tuple[float, float] | None:
    """(own utime+stime, children's cutime+cstime) in seconds, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) "
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already included in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def find_postmaster() -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm.startswith("postgres"):
            try:
                parent_comm = Path(f"/proc/{ppid}/comm").read_text().strip()
            except OSError:
                parent_comm = ""
            if not parent_comm.startswith("postgres"):
                return int(entry)
    return None


def _pg_children(postmaster: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()]
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return pids


class PgCpuMonitor:
    """PostgreSQL CPU over a measurement window, two ways.

    all: postmaster own + children's (cutime: backends that exited and were reaped) + every live child,
         delta over the window. Exact for the whole server, but includes other databases' work.
    ours: backends whose cmdline names our database, sampled every `interval` s (last value seen; a backend's
         last < interval s before it exits is missed), plus the auxiliary processes (walwriter, checkpointer,
         bgwriter, autovacuum launcher...) that serve every database.
    """

    def __init__(self, dbname: str, interval: float = 0.1) -> None:
        self.dbname = dbname
        self.interval = interval
        self.postmaster = find_postmaster()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.first: dict[int, float] = {}  # pid -> cpu at first sight (0 for backends born in the window)
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.foreign_backends: set[int] = set()

    def _total_all(self) -> float:
        if self.postmaster is None:
            return 0.0
        own = proc_cpu(self.postmaster)
        total = (own[0] + own[1]) if own else 0.0
        for pid in _pg_children(self.postmaster):
            c = proc_cpu(pid)
            if c:
                total += c[0]
        return total

    def _sample(self, initial: bool = False) -> None:
        if self.postmaster is None:
            return
        for pid in _pg_children(self.postmaster):
            c = proc_cpu(pid)
            if c is None:
                continue
            if self.kind.get(pid, "other") == "other":  # re-read: a new backend names its database only
                cmd = _cmdline(pid)                         # after authentication rewrites its title
                if f" {self.dbname} " in f" {cmd} ":
                    kind = "ours"
                elif any(w in cmd for w in ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
                                             "logical replication launcher", "stats collector", "archiver")):
                    kind = "aux"
                else:
                    kind = "other"  # a backend of another database, an autovacuum worker, a parallel worker
                self.kind[pid] = kind
                # a process born during the window counts from zero; one alive at the start from its value then
                self.first.setdefault(pid, c[0] if initial else 0.0)
            self.last[pid] = c[0]
        self.foreign_backends = {p for p, k in self.kind.items() if k == "other" and self.last[p] > self.first[p]}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.all_start = self._total_all()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pg-cpu")
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        all_end = self._total_all()

        def part(kind: str) -> float:
            return sum(self.last[p] - self.first[p] for p in self.last if self.kind.get(p) == kind)

        ours, aux, other = part("ours"), part("aux"), part("other")
        return {
            "all_s": round(all_end - self.all_start, 3),
            "ours_backends_s": round(ours, 3),
            "aux_s": round(aux, 3),
            "ours_plus_aux_s": round(ours + aux, 3),
            "other_seen_s": round(other, 3),
            "our_backends": sum(1 for k in self.kind.values() if k == "ours"),
            "other_activity": bool(self.foreign_backends),
            "postmaster_pid": self.postmaster,
        }


class TreeMonitor:
    """The import's descendants (the chunk workers' fork server, the workers, multiprocessing's resource tracker).

    They are not reaped by the import process (the fork server reaps the workers and outlives the import by a few
    ms), so `wait4` of the import does not include their CPU: each one's own utime+stime is sampled every
    `interval` s and its last value kept (a worker's last < interval s is missed). Memory, two figures: the peak of
    the summed RSS of the import and its descendants (every sample; an upper bound, pages a worker shares with the
    fork server count twice), and the peak of the summed PSS (pages shared between processes split among them;
    sampled every `pss_interval` s only: reading smaps_rollup costs ~15 ms per process of a few hundred MB).
    Descendants are found through /proc/<pid>/task/<tid>/children, not a scan of /proc.
    """

    def __init__(self, root: int, interval: float = 0.1, pss_interval: float = 2.0) -> None:
        self.root = root
        self.interval = interval
        self.pss_every = max(1, round(pss_interval / interval))
        self.cpu: dict[int, float] = {}
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_processes = 1
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-monitor")

    def _descendants(self) -> set[int]:
        found: set[int] = set()
        frontier = [self.root]
        while frontier:
            pid = frontier.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    children = {int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()}
                except OSError:
                    continue
                frontier.extend(children - found)
                found |= children
        return found

    def _sample(self) -> None:
        below = self._descendants()
        tree = below | {self.root}
        self.peak_rss_mb = max(self.peak_rss_mb, sum(_rss_mb(pid) or 0.0 for pid in tree))
        if self._samples % self.pss_every == 0:
            self.peak_pss_mb = max(self.peak_pss_mb, sum(_pss_mb(pid) or 0.0 for pid in tree))
        self._samples += 1
        for pid in below:
            c = proc_cpu(pid)
            if c is not None:
                self.cpu[pid] = c[0]
        self.peak_processes = max(self.peak_processes, len(tree))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"descendants_cpu_s": round(sum(self.cpu.values()), 3), "descendants": len(self.cpu),
                "peak_tree_rss_mb": round(self.peak_rss_mb, 1), "peak_tree_pss_mb": round(self.peak_pss_mb, 1),
                "peak_processes": self.peak_processes}


def _pss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


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
    def __init__(self, sc: Scenario, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"sim-{sc.name}.log"
        self.log = open(self.log_path, "wb")
        cmd = [WAHA, "simulate", "--port", str(self.port), "--seed", str(sc.seed), "--chats", str(sc.chats),
               "--messages", str(sc.messages), "--session", CHANNEL, "--engine", sc.engine]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_")}
        env.update(CODE_ENV)
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                     start_new_session=True)
        _CHILDREN.add(self.proc)
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
        self.rss_mb = _rss_mb(self.proc.pid)

    def configure(self, sc: Scenario) -> dict:
        return http("POST", f"{self.url}/_sim/faults", {"latency_ms": sc.latency_ms, "jitter_ms": sc.jitter_ms,
                                                        "max_concurrent": sc.max_concurrent or 0})

    def reset_stats(self) -> None:
        http("POST", f"{self.url}/_sim/reset-stats", {})

    def stats(self) -> dict:
        return http("GET", f"{self.url}/_sim/stats")

    def dataset(self) -> dict:
        return http("GET", f"{self.url}/_sim/dataset")

    def cpu(self) -> float:
        c = proc_cpu(self.proc.pid)
        return c[0] if c else float("nan")

    def stop(self) -> None:
        _terminate(self.proc)
        _CHILDREN.discard(self.proc)
        self.log.close()


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


_CHILDREN: set[subprocess.Popen] = set()
CODE_ENV: dict[str, str] = {}  # PYTHONPATH of a `--code REF` snapshot, for the simulator and import processes


def snapshot_code(ref: str, workdir: Path) -> dict:
    """Export waha_pipeline/ at `ref` into workdir and import it from there (PYTHONPATH precedes the editable
    install's finder), so that a benchmark is not disturbed by edits made to the working tree meanwhile."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    dest = workdir / f"code-{commit[:10]}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit, "waha_pipeline"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    CODE_ENV["PYTHONPATH"] = str(dest)
    return {"ref": ref, "commit": commit, "path": str(dest)}


def _terminate(proc: subprocess.Popen) -> None:
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


# ----------------------------------------------------------------------------------------------- import
PROFILE_DIR: Path | None = None  # --profile: wrap the import in `py-spy record` (dev aid; perturbs the figures)
WAIT_IDLE_S = 0.0  # --wait-idle: wait up to this long for the machine to be quiet before each import


def wait_idle(max_wait: float, threshold: float = 0.25, quiet_windows: int = 3) -> dict:
    """Wait (at most max_wait s) until the machine's busy CPU stays under `threshold` of its capacity for
    `quiet_windows` consecutive 1-second windows. Other work on the box inflates wall time, not CPU time."""
    started = time.monotonic()
    quiet = 0
    last = 1.0
    prev = machine_cpu()
    while time.monotonic() - started < max_wait and quiet < quiet_windows:
        time.sleep(1.0)
        cur = machine_cpu()
        last = (cur[0] - prev[0]) / max(cur[1] - prev[1], 1e-9)
        prev = cur
        quiet = quiet + 1 if last < threshold else 0
    return {"waited_s": round(time.monotonic() - started, 1), "idle": quiet >= quiet_windows,
            "busy_share_last_1s": round(last, 3)}


def run_import(sc: Scenario, sim: Simulator, db: str, home: Path, log_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_") and k not in ("DATABASE_URL",)}
    env.update(WAHA_BASE_URL=sim.url, DATABASE_URL=db_url(db), DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1")
    env.update(CODE_ENV)
    if sc.max_concurrent:  # told what the server allows, as its operator would: T0 assumes that concurrency
        env["WAHA_CONCURRENCY"] = str(sc.max_concurrent)
    for k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE"):  # importer tuning knobs pass through when set explicitly
        if k in os.environ:
            env[k] = os.environ[k]
    cmd = [WAHA, "import", CHANNEL, "--days", str(sc.days)]
    profile = None
    if PROFILE_DIR is not None:
        profile = PROFILE_DIR / f"{log_path.stem}.collapsed.txt"
        cmd = [shutil.which("py-spy") or str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", "50",
               "--nonblocking", "--subprocesses", "-o", str(profile), "--"] + cmd
    idle = wait_idle(WAIT_IDLE_S) if WAIT_IDLE_S > 0 else None
    pg = PgCpuMonitor(db)
    pg.start()
    sim_cpu0 = sim.cpu()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    mach0 = machine_cpu()
    box: dict = {}
    with open(log_path, "wb") as log:
        t_wall0 = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
                                start_new_session=True)
        _CHILDREN.add(proc)
        tree = TreeMonitor(proc.pid)
        tree.start()

        def reap() -> None:
            _, status, ru = os.wait4(proc.pid, 0)
            box["t1"] = time.monotonic()
            box["status"], box["ru"] = status, ru

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(IMPORT_TIMEOUT_S)
        timed_out = waiter.is_alive()
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            waiter.join(30)
        proc.returncode = os.waitstatus_to_exitcode(box["status"]) if "status" in box else -9
        _CHILDREN.discard(proc)
    wall = box.get("t1", time.monotonic()) - t0
    procs = tree.stop()
    sim_cpu1 = sim.cpu()
    mach1 = machine_cpu()
    pg_cpu = pg.stop()
    ru = box.get("ru")
    busy = mach1[0] - mach0[0]
    importer_cpu = (ru.ru_utime + ru.ru_stime if ru else 0) + procs["descendants_cpu_s"]
    ours = importer_cpu + (sim_cpu1 - sim_cpu0) + (
        pg_cpu["all_s"] if not pg_cpu["other_activity"] else pg_cpu["ours_plus_aux_s"])
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    return {
        "command": " ".join(cmd),
        "import_env": {k: env[k] for k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE", "IMPORT_WORKERS") if k in env},
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "started_at_unix": t_wall0,
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1) if ru else None,
        "peak_tree_pss_mb": procs["peak_tree_pss_mb"],
        "peak_tree_rss_mb": procs["peak_tree_rss_mb"],
        "processes": procs,
        "cpu_importer_s": round(importer_cpu, 3) if ru else None,
        "cpu_import_process_s": round(ru.ru_utime + ru.ru_stime, 3) if ru else None,
        "cpu_importer_user_s": round(ru.ru_utime, 3) if ru else None,
        "cpu_importer_sys_s": round(ru.ru_stime, 3) if ru else None,
        "cpu_sim_s": round(sim_cpu1 - sim_cpu0, 3),
        "cpu_pg": pg_cpu,
        "wait_idle": idle,
        "profile": str(profile) if profile else None,
        "loadavg_before_after": [load0, Path("/proc/loadavg").read_text().split()[:3]],
        # whole-machine CPU during the import: what the benchmark's processes used, and the rest (other work on
        # the box competing for the same cores; includes this harness's sampling, a few ms)
        "machine_cpu": {"busy_s": round(busy, 2), "capacity_s": round(mach1[1] - mach0[1], 2),
                        "others_s": round(busy - ours, 2)},
        "log": str(log_path),
        "log_tail": tail if proc.returncode != 0 else tail[-3:],
    }


def dagster_breakdown(home: Path, spawn_unix: float, wall: float, exclude_runs: set[str]) -> dict:
    """Chunk-step and plan-step durations from the Dagster instance the import used."""
    import dagster as dg

    types = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
             dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE}
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    runs_out = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for run in instance.get_runs():
                if run.run_id in exclude_runs:
                    continue
                steps: dict[str, dict] = {}
                run_start = run_end = None
                first_ts = last_ts = None
                for rec in instance.all_logs(run.run_id):
                    ts = rec.timestamp
                    first_ts = ts if first_ts is None else min(first_ts, ts)
                    last_ts = ts if last_ts is None else max(last_ts, ts)
                    ev = rec.dagster_event
                    if ev is None or ev.event_type not in types:
                        continue
                    if ev.event_type == dg.DagsterEventType.RUN_START:
                        run_start = ts
                    elif ev.event_type in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE):
                        run_end = ts
                    elif rec.step_key:
                        s = steps.setdefault(rec.step_key, {})
                        if ev.event_type == dg.DagsterEventType.STEP_START:
                            s["start"] = ts
                        else:
                            s["end"], s["ok"] = ts, ev.event_type == dg.DagsterEventType.STEP_SUCCESS
                runs_out.append({
                    "run_id": run.run_id, "job": run.job_name, "status": str(run.status.value),
                    "first_event": first_ts, "last_event": last_ts,
                    "run_s": (run_end - run_start) if run_start and run_end else None,
                    "steps": {k: {"s": (v["end"] - v["start"]) if "start" in v and "end" in v else None,
                                  "ok": v.get("ok")} for k, v in steps.items()},
                    "tags": {k: v for k, v in run.tags.items() if k.startswith("dagster/asset_partition_range")},
                })
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old
    runs_out.sort(key=lambda r: r["first_event"] or 0)
    chunk_runs = [r for r in runs_out if r["job"] == "chunk_import_job"]
    plan_runs = [r for r in runs_out if r["job"] == "channel_plan_job"]
    chunk_s = sum((s["s"] or 0) for r in chunk_runs for s in r["steps"].values())
    plan_s = sum((s["s"] or 0) for r in plan_runs for s in r["steps"].values())
    run_total = sum(r["run_s"] or 0 for r in runs_out)
    first = min((r["first_event"] for r in runs_out if r["first_event"]), default=None)
    last = max((r["last_event"] for r in runs_out if r["last_event"]), default=None)
    outside = wall - chunk_s
    return {
        "runs": len(runs_out), "chunk_runs": len(chunk_runs), "plan_runs": len(plan_runs),
        "chunk_step_s": round(chunk_s, 3),
        "plan_step_s": round(plan_s, 3),
        "outside_chunk_s": round(outside, 3),
        "outside_chunk_share": round(outside / wall, 4) if wall > 0 else None,
        # where the outside time goes (event timestamps are wall-clock, compared with the spawn time)
        "startup_s": round(first - spawn_unix, 3) if first else None,  # process start, imports, instance, migrations
        "run_bookkeeping_s": round(run_total - chunk_s - plan_s, 3),  # inside runs, outside steps
        "between_runs_s": round((last - first) - run_total, 3) if first and last else None,
        "shutdown_s": round(spawn_unix + wall - last, 3) if last else None,  # last event -> exit (report, exit)
        "per_run": [{"job": r["job"], "run_s": r["run_s"] and round(r["run_s"], 3),
                     "steps": {k: v["s"] and round(v["s"], 3) for k, v in r["steps"].items()},
                     "status": r["status"], "range": r["tags"]} for r in runs_out],
        "run_ids": [r["run_id"] for r in runs_out],
    }


def crm_counts(db: str) -> dict:
    with psycopg.connect(db_url(db)) as conn:
        out = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in CRM_TABLES}
        out["chunks_committed"] = conn.execute(
            "SELECT count(*) FROM import_chunks WHERE status = 'committed' AND plan_id = "
            "(SELECT id FROM import_plans ORDER BY plan_time DESC, created_at DESC LIMIT 1)").fetchone()[0]
    return out


# ----------------------------------------------------------------------------------------------- scenario
def measure(sc: Scenario, sim: Simulator, db: str, home: Path, workdir: Path, label: str,
            exclude_runs: set[str]) -> dict:
    sim.reset_stats()
    res = run_import(sc, sim, db, home, workdir / f"import-{label}.log")
    stats = sim.stats()
    res["requests"] = {k: stats.get(k, 0) for k in ("total", "sessions", "chats", "messages", "lids", "other")}
    res["requests"]["by_status"] = stats.get("by_status")
    res["requests"]["max_in_flight"] = stats.get("max_in_flight")
    by_chat = stats.get("messages_by_chat") or {}
    res["requests"]["chats_with_message_requests"] = len(by_chat)
    res["requests"]["max_message_requests_per_chat"] = max(by_chat.values(), default=0)
    try:
        res["crm"] = crm_counts(db)
    except psycopg.Error as exc:
        res["crm"] = {"error": str(exc)}
    try:
        res["dagster"] = dagster_breakdown(home, res["started_at_unix"], res["wall_s"], exclude_runs)
    except Exception as exc:  # noqa: BLE001 - a broken instance must not lose the other figures
        res["dagster"] = {"error": f"{type(exc).__name__}: {exc}"}
    wall = res["wall_s"]
    msgs = res["crm"].get("messages") if isinstance(res["crm"].get("messages"), int) else None
    res["messages_per_s"] = round(msgs / wall, 1) if msgs and wall else None
    res["t0_s"] = round(res["requests"]["total"] * 0.1 / sc.max_concurrent, 3) if sc.max_concurrent else None
    res["wall_over_t0"] = round(wall / res["t0_s"], 3) if res["t0_s"] else None
    return res


def run_scenario(sc: Scenario, workdir: Path, keep_db: bool) -> list[dict]:
    print(f"\n== {sc.name}: {sc.chats} chats, ~{sc.messages} messages, --days {sc.days}, latency "
          f"{sc.latency_ms}+U(0,{sc.jitter_ms}) ms, max_concurrent {sc.max_concurrent}", flush=True)
    db = f"waha_bench_{sc.name.replace('-', '_')}"
    home = Path(tempfile.mkdtemp(prefix=f"dh-{sc.name}-", dir=workdir))
    rows: list[dict] = []
    sim = None
    try:
        sim = Simulator(sc, workdir)
        print(f"   simulator up in {sim.startup_s:.1f} s (RSS {sim.rss_mb} MB) at {sim.url}", flush=True)
        faults = sim.configure(sc)
        dataset = sim.dataset()["sessions"][CHANNEL]
        recreate_db(db)
        first = measure(sc, sim, db, home, workdir, sc.name, set())
        base = {"scenario": sc.name, "chats": sc.chats, "target_messages": sc.messages, "days": sc.days,
                "faults": faults, "dataset": dataset, "simulator_startup_s": round(sim.startup_s, 2),
                "simulator_rss_mb_after_build": sim.rss_mb}
        rows.append({**base, **first})
        _progress(rows[-1])
        if sc.rerun and first["exit_code"] == 0:
            time.sleep(1.5)  # let the first import's backends flush their table stats
            copy_crm_tables(db)
            before = crm_snapshot(db)
            again = measure(sc, sim, db, home, workdir, f"{sc.name}-rerun",
                            set(first.get("dagster", {}).get("run_ids", [])))
            wait_stats_flushed(db)
            after = crm_snapshot(db)
            diff = snapshot_diff(before, after)
            crm_changes = {t: d for t, d in diff.items() if t in CRM_TABLES}
            again["rerun_of"] = sc.name
            again["rerun_wall_ratio"] = round(again["wall_s"] / first["wall_s"], 4) if first["wall_s"] else None
            again["rows_changed"] = {
                t: d["inserted"] + d["updated"] + d["deleted"] for t, d in crm_changes.items()}
            again["rows_changed_total"] = sum(again["rows_changed"].values())
            again["content_unchanged"] = all(d["same_content"] for d in crm_changes.values())
            again["table_diff"] = diff
            changed = [t for t, d in crm_changes.items() if not d["same_content"] or d["inserted"] + d["updated"]
                       + d["deleted"]]
            if changed:
                again["changed_rows"] = changed_rows(db, changed)
                for t in changed:
                    c = again["changed_rows"][t]
                    print(f"   {t}: {c['rows']} row(s) differ, columns {c['columns']}; e.g. {c['examples'][:1]}",
                          flush=True)
            rows.append({**base, **again, "scenario": f"{sc.name}-rerun"})
            _progress(rows[-1])
    except Exception as exc:  # noqa: BLE001 - report the scenario as failed and move on
        print(f"   {sc.name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        rows.append({"scenario": sc.name, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        if sim is not None:
            sim.stop()
        if not keep_db:
            drop_db(db)
            shutil.rmtree(home, ignore_errors=True)
    return rows


def _progress(r: dict) -> None:
    d = r.get("dagster", {})
    print(f"   {r['scenario']}: exit {r['exit_code']}{' TIMEOUT' if r['timed_out'] else ''}, wall {r['wall_s']:.2f} s, "
          f"requests {r['requests']['total']}, messages {r['crm'].get('messages')}, "
          f"RSS {r['peak_rss_mb']} MB, outside chunk {d.get('outside_chunk_share')}", flush=True)
    if r["exit_code"] != 0:
        print("   import log tail:\n      " + "\n      ".join(r["log_tail"]), flush=True)


# ----------------------------------------------------------------------------------------------- output
def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v)


def table(rows: list[dict]) -> str:
    head = ["scenario", "msgs", "chats", "req total (msg/chat/sess/lid)", "msg req/chat", "wall s", "T0 s",
            "wall/T0", "msgs/s", "peak RSS MB (tree PSS)", "CPU s imp/sim/pg", "others' CPU s", "outside chunk", "exit", "rerun"]
    lines = []
    for r in rows:
        if "error" in r and "wall_s" not in r:
            lines.append([r["scenario"], "ERROR: " + r["error"].splitlines()[0][:100]] + [""] * (len(head) - 2))
            continue
        q = r["requests"]
        chats = r.get("dataset", {}).get("chats") or r["chats"]
        d = r.get("dagster", {})
        pg = r["cpu_pg"]
        pg_s = pg["all_s"] if not pg["other_activity"] else pg["ours_plus_aux_s"]
        share = d.get("outside_chunk_share")
        rerun = ""
        if "rerun_wall_ratio" in r:
            rerun = (f"{r['rerun_wall_ratio'] * 100:.1f}% wall, {r['rows_changed_total']} rows chg"
                     f"{'' if r['content_unchanged'] else ', CONTENT DIFFERS'}")
        lines.append([
            r["scenario"], _fmt(r["crm"].get("messages")), _fmt(chats),
            f"{q['total']} ({q['messages']}/{q['chats']}/{q['sessions']}/{q['lids']})",
            f"{q['messages'] / chats:.2f}" if chats else "-",
            f"{r['wall_s']:.2f}", _fmt(r["t0_s"], ".2f"), _fmt(r["wall_over_t0"], ".2f"),
            _fmt(r["messages_per_s"], ".0f"),
            f"{_fmt(r['peak_rss_mb'], '.0f')} ({_fmt(r.get('peak_tree_pss_mb'), '.0f')})",
            f"{r['cpu_importer_s']:.1f}/{r['cpu_sim_s']:.1f}/{pg_s:.1f}{'*' if pg['other_activity'] else ''}",
            f"{r['machine_cpu']['others_s']:.1f}",
            f"{share * 100:.1f}% ({d.get('outside_chunk_s'):.1f} s)" if share is not None else "-",
            f"{r['exit_code']}{' T/O' if r['timed_out'] else ''}", rerun,
        ])
    widths = [max(len(h), *(len(str(l[i])) for l in lines if not str(l[1]).startswith("ERROR")))
              if any(not str(l[1]).startswith("ERROR") for l in lines) else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(l, widths)).rstrip() for l in lines]
    return "\n".join(out)


def breakdown(rows: list[dict]) -> str:
    """Where the wall time outside chunk work goes, per scenario (seconds)."""
    head = ["scenario", "wall", "chunk steps", "outside", "start-up", "plan step", "in-run bookkeeping",
            "between runs", "after last run", "runs"]
    lines = []
    for r in rows:
        d = r.get("dagster")
        if not d or "error" in d:
            continue
        lines.append([r["scenario"], f"{r['wall_s']:.2f}", f"{d['chunk_step_s']:.2f}", f"{d['outside_chunk_s']:.2f}",
                      _fmt(d["startup_s"], ".2f"), f"{d['plan_step_s']:.2f}", f"{d['run_bookkeeping_s']:.2f}",
                      _fmt(d["between_runs_s"], ".2f"), _fmt(d["shutdown_s"], ".2f"),
                      f"{d['plan_runs']}+{d['chunk_runs']}"])
    if not lines:
        return ""
    widths = [max(len(h), *(len(str(l[i])) for l in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(l, widths)) for l in lines]
    return "\n".join(out)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each with the measured figure (reported whether met or missed)."""
    by = {r["scenario"]: r for r in rows if "wall_s" in r}
    out = []

    def check(name: str, ok: bool, figure: str) -> None:
        out.append(f"[{'met' if ok else 'MISSED'}] {name}: {figure}")

    if (s := by.get("seed")) and s["wall_over_t0"] is not None:
        check("seed wall/T0 <= 1.5", s["wall_over_t0"] <= 1.5, f"{s['wall_over_t0']:.2f}")
        chats = s["dataset"].get("chats") or s["chats"]
        per = s["requests"]["messages"] / chats
        check("seed message requests per chat <= 2", per <= 2, f"{per:.2f}")
        share = s.get("dagster", {}).get("outside_chunk_share")
        if share is not None:
            check("seed share of wall outside chunk work <= 20%", share <= 0.20, f"{share * 100:.1f}%")
    if s := by.get("scale"):
        mps = s["messages_per_s"] or 0
        check("scale >= 15,000 messages/s", mps >= 15000, f"{mps:.0f}")
        # several processes: the largest one's RSS, or the tree's summed PSS if that is more
        peak = max(s["peak_rss_mb"] or 1e9, s.get("peak_tree_pss_mb") or 0)
        check("scale peak memory <= 300 MB", peak <= 300,
              f"{s['peak_rss_mb']} MB largest process RSS, {s.get('peak_tree_pss_mb')} MB tree PSS")
    if s := by.get("scale-rerun"):
        check("scale rerun <= 10% of first wall", s["rerun_wall_ratio"] <= 0.10, f"{s['rerun_wall_ratio'] * 100:.1f}%")
    for name in ("seed-rerun", "scale-rerun"):
        if s := by.get(name):
            check(f"{name} zero rows changed", s["rows_changed_total"] == 0 and s["content_unchanged"],
                  f"{s['rows_changed_total']} ({s['rows_changed']}), content "
                  f"{'unchanged' if s['content_unchanged'] else 'DIFFERS'}")
    g100, g1m = by.get("growth-100k"), by.get("growth-1M")
    if g100 and g1m:
        ratio = g1m["wall_s"] / g100["wall_s"]
        check("growth 100k -> 1M wall at most 11x", ratio <= 11, f"{ratio:.2f}x")
    return out


def machine_info() -> dict:
    def grab(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    pg_version = None
    try:
        with psycopg.connect(PG_ADMIN) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
            shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
    except psycopg.Error:
        shared_buffers = None
    mem_kb = grab("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(), "cpu_model": grab("/proc/cpuinfo", "model name"),
        "mem_total_mb": round(int(mem_kb.split()[0]) / 1024) if mem_kb else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": [l for l in git("status", "--porcelain", "--", "waha_pipeline").splitlines() if l],
        "postgres": pg_version, "pg_shared_buffers": shared_buffers,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "env": {k: v for k, v in os.environ.items() if k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["seed"], help="seed, scale, rerun, growth (default: seed)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    ap.add_argument("--growth-sizes", default=None, help="comma-separated message counts for `growth`")
    ap.add_argument("--keep-db", action="store_true",
                    help="keep the benchmark databases and DAGSTER_HOMEs (default: drop them)")
    ap.add_argument("--code", default=None, metavar="REF",
                    help="benchmark the committed waha_pipeline/ at this git ref (e.g. HEAD) instead of the working "
                         "tree, which others may be editing")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each import, wait up to S seconds for the machine to be quiet (<25%% busy for 3 s)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="wrap each import in `py-spy record` (if installed) writing collapsed stacks to DIR; "
                         "the figures then include py-spy's overhead")
    ap.add_argument("--out", default=None, help="JSON output path (default bench/results/<timestamp>.json)")
    ap.add_argument("--engine", default="gows", choices=("gows", "noweb", "webjs"),
                    help="the simulator's WAHA engine profile for every scenario (default: gows)")
    args = ap.parse_args(argv)
    global WAIT_IDLE_S, PROFILE_DIR
    WAIT_IDLE_S = args.wait_idle
    if args.profile:
        PROFILE_DIR = Path(args.profile).resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.growth_sizes.split(",")] if args.growth_sizes else None
    scenarios = [dataclasses.replace(sc, engine=args.engine)
                 for sc in build_scenarios(args.scenarios, args.quick, sizes)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix=f"waha-bench-{stamp}-"))
    out_path = Path(args.out) if args.out else RESULTS / f"{stamp}.json"
    info = machine_info()
    info["code"] = snapshot_code(args.code, workdir) if args.code else {"ref": "working tree", "path": str(REPO)}
    print(f"waha-pipeline benchmark {stamp}: {info['nproc']} CPU ({info['cpu_model']}), {info['mem_total_mb']} MB, "
          f"Python {info['python']}, PostgreSQL {info['postgres']}, commit {info['git_commit'][:10]}"
          f"{' (+local changes in waha_pipeline/)' if info['git_dirty_files'] else ''}; code: {info['code']['ref']}"
          f"{' ' + info['code'].get('commit', '')[:10]}; logs in {workdir}")

    def on_signal(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rows: list[dict] = []
    try:
        for sc in scenarios:
            rows.extend(run_scenario(sc, workdir, args.keep_db))
            _write(out_path, stamp, info, args, rows, workdir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        for proc in list(_CHILDREN):
            _terminate(proc)
    print()
    print(table(rows))
    print()
    print(breakdown(rows))
    print()
    if any(r.get("cpu_pg", {}).get("other_activity") for r in rows):
        print("* PostgreSQL CPU: other databases were active, so this is our database's backends (sampled) + "
              "the shared auxiliary processes")
    for line in targets(rows):
        print(line)
    _write(out_path, stamp, info, args, rows, workdir)
    print(f"\nJSON: {out_path}")
    return 0 if rows and all(r.get("exit_code") == 0 for r in rows) else 1


def _write(path: Path, stamp: str, info: dict, args: argparse.Namespace, rows: list[dict], workdir: Path) -> None:
    doc = {"timestamp": stamp, "argv": sys.argv[1:], "quick": args.quick, "machine": info, "logs": str(workdir),
           "scenarios": rows, "targets": targets(rows)}
    path.write_text(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
