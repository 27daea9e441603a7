"""What is run: the scenarios (a simulated channel, WAHA's latency and concurrency, the CRM), and how one import of
the product and one of the floor (bench/floor_importer.py) are measured side by side against the same simulator.

Every run gets a fresh database (and a fresh DAGSTER_HOME for the product); product and floor alternate which
goes first from run to run, so a drift of the machine's load weighs on both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import crm_compare
import psycopg
from environment import (
    BENCH_DIR,
    CHANNEL,
    CHILDREN,
    CODE_ENV,
    CRM_TABLES,
    VENV_BIN,
    WAHA,
    Simulator,
    changed_rows,
    copy_crm_tables,
    crm_counts,
    crm_snapshot,
    db_url,
    drop_db,
    recreate_db,
    snapshot_diff,
    wait_stats_flushed,
)
from sampling import (
    FirstRequestWatch,
    PgCpuMonitor,
    TreeMonitor,
    machine_cpu,
    wait_idle,
)

IMPORT_TIMEOUT_S = float(os.environ.get("BENCH_IMPORT_TIMEOUT_S", "1800"))
SESSION_TIMEOUT_S = 30 * 60  # the imports' conversation session timeout (the default)
TRUTH_MAX_MESSAGES = 200_000  # above this the truth is not fetched (product and floor are compared with each other)
FLOOR = BENCH_DIR / "floor_importer.py"


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
    crm: str = "postgresql"  # the product's CRM: postgresql or sqlite (the floor always writes PostgreSQL)
    extra: dict = field(default_factory=dict)


@dataclass
class Options:
    """Harness settings that apply to every import."""

    wait_idle_s: float = 0.0  # wait up to this long for the machine to be quiet before each import
    profile_dir: Path | None = None  # wrap the product's import in `py-spy record` (dev aid; perturbs the figures)
    runs: int = 3
    floor: bool = True
    keep_db: bool = False


OPTIONS = Options()


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
        elif name in ("scale", "scale-sqlite"):
            chats, msgs = (1000, 50_000) if quick else (10_000, 1_000_000)
            out.append(Scenario(name, chats, msgs, days=365, rerun=want_rerun and name == "scale",
                                crm="sqlite" if name == "scale-sqlite" else "postgresql"))
        elif name == "growth":
            sizes = growth_sizes or ([1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000])
            for m in sizes:
                out.append(Scenario(f"growth-{_short(m)}", max(20, m // 100), m, days=0))  # sim needs >= 16 chats
        else:
            raise SystemExit(f"unknown scenario {name!r} (seed, scale, scale-sqlite, rerun, growth)")
    return out


def _short(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def _concurrency(sc: Scenario) -> int:
    """WAHA requests in flight: what the server allows when it caps them (as its operator would tell the
    importer), an explicit WAHA_CONCURRENCY in the harness's environment, else the product's default."""
    if "WAHA_CONCURRENCY" in os.environ:
        return int(os.environ["WAHA_CONCURRENCY"])
    return sc.max_concurrent or 32


# ----------------------------------------------------------------------------------------------- one process
def measure_process(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, sim: Simulator,
                    dbnames: tuple[str, ...]) -> dict:
    """Run one import process to its end and measure it: wall, exit, the whole tree's memory and CPU (sampling.py),
    the simulator's and PostgreSQL's CPU, the machine's, and the time to the first WAHA request."""
    idle = wait_idle(OPTIONS.wait_idle_s) if OPTIONS.wait_idle_s > 0 else None
    pg = PgCpuMonitor(dbnames)
    pg.start()
    sim_cpu0 = sim.cpu()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    mach0 = machine_cpu()
    box: dict = {}
    with open(log_path, "wb") as log:
        t_wall0 = time.time()
        t0 = time.monotonic()
        first = FirstRequestWatch(sim.total_requests, t0)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        first.start()
        CHILDREN.add(proc)
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
        CHILDREN.discard(proc)
    wall = box.get("t1", time.monotonic()) - t0
    procs = tree.stop()
    first_request_s = first.stop()
    sim_cpu1 = sim.cpu()
    mach1 = machine_cpu()
    pg_cpu = pg.stop()
    ru = box.get("ru")
    busy = mach1[0] - mach0[0]
    importer_cpu = (ru.ru_utime + ru.ru_stime if ru else 0) + procs["descendants_cpu_s"]
    ours = importer_cpu + (sim_cpu1 - sim_cpu0) + (
        pg_cpu["all_s"] if not pg_cpu["other_activity"] else pg_cpu["ours_plus_aux_s"])
    lines = log_path.read_text(errors="replace").splitlines()
    return {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "started_at_unix": t_wall0,
        "first_request_s": first_request_s,
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1) if ru else None,  # the largest process wait4 saw
        "peak_tree_rss_mb": procs["peak_tree_rss_mb"],
        "peak_tree_pss_mb": procs["peak_tree_pss_mb"],
        "processes": procs,
        "cpu_importer_s": round(importer_cpu, 3) if ru else None,
        "cpu_import_process_s": round(ru.ru_utime + ru.ru_stime, 3) if ru else None,
        "cpu_importer_user_s": round(ru.ru_utime, 3) if ru else None,
        "cpu_importer_sys_s": round(ru.ru_stime, 3) if ru else None,
        "cpu_sim_s": round(sim_cpu1 - sim_cpu0, 3),
        "cpu_pg": pg_cpu,
        "wait_idle": idle,
        "loadavg_before_after": [load0, Path("/proc/loadavg").read_text().split()[:3]],
        # whole-machine CPU during the import: what the benchmark's processes used, and the rest (other work on
        # the box competing for the same cores; includes this harness's sampling, a few ms)
        "machine_cpu": {"busy_s": round(busy, 2), "capacity_s": round(mach1[1] - mach0[1], 2),
                        "others_s": round(busy - ours, 2)},
        "log": str(log_path),
        "log_tail": lines[-15:] if proc.returncode != 0 else lines[-3:],
    }


def _requests(sim: Simulator) -> dict:
    stats = sim.stats()
    out = {k: stats.get(k, 0) for k in ("total", "sessions", "chats", "messages", "lids", "other")}
    out["by_status"] = stats.get("by_status")
    out["max_in_flight"] = stats.get("max_in_flight")
    by_chat = stats.get("messages_by_chat") or {}
    out["chats_with_message_requests"] = len(by_chat)
    out["max_message_requests_per_chat"] = max(by_chat.values(), default=0)
    return out


def _rates(res: dict, sc: Scenario, messages: int | None) -> None:
    wall = res["wall_s"]
    res["messages_per_s"] = round(messages / wall, 1) if messages and wall else None
    res["t0_s"] = round(res["requests"]["total"] * 0.1 / sc.max_concurrent, 3) if sc.max_concurrent else None
    res["wall_over_t0"] = round(wall / res["t0_s"], 3) if res["t0_s"] else None


# ----------------------------------------------------------------------------------------------- the product
def product_url(sc: Scenario, db: str, home: Path) -> str:
    return f"sqlite:///{home / 'crm.sqlite'}" if sc.crm == "sqlite" else db_url(db)


def run_import(sc: Scenario, sim: Simulator, db: str, home: Path, log_path: Path) -> dict:
    """One `waha-pipeline import` process (the product) against `sim`, CRM `db` (or SQLite in `home`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_") and k not in ("DATABASE_URL",)}
    env.update(WAHA_BASE_URL=sim.url, DATABASE_URL=product_url(sc, db, home), DAGSTER_HOME=str(home),
               PYTHONUNBUFFERED="1")
    env.update(CODE_ENV)
    if sc.max_concurrent:  # told what the server allows, as its operator would: T0 assumes that concurrency
        env["WAHA_CONCURRENCY"] = str(sc.max_concurrent)
    for k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE"):  # importer tuning knobs pass through when set explicitly
        if k in os.environ:
            env[k] = os.environ[k]
    cmd = [WAHA, "import", CHANNEL, "--days", str(sc.days)]
    profile = None
    if OPTIONS.profile_dir is not None:
        profile = OPTIONS.profile_dir / f"{log_path.stem}.collapsed.txt"
        cmd = [shutil.which("py-spy") or str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", "50",
               "--nonblocking", "--subprocesses", "-o", str(profile), "--"] + cmd
    res = measure_process(cmd, env, home, log_path, sim, (db,))
    res["import_env"] = {k: env[k] for k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE", "IMPORT_WORKERS") if k in env}
    res["profile"] = str(profile) if profile else None
    return res


def measure_product(sc: Scenario, sim: Simulator, db: str, home: Path, workdir: Path, label: str,
                    exclude_runs: set[str]) -> dict:
    sim.reset_stats()
    res = run_import(sc, sim, db, home, workdir / f"import-{label}.log")
    res["requests"] = _requests(sim)
    url = product_url(sc, db, home)
    try:
        res["crm"] = crm_counts(url)
    except (psycopg.Error, OSError, Exception) as exc:  # noqa: BLE001 - a broken CRM must not lose the other figures
        res["crm"] = {"error": str(exc)}
    try:
        res["dagster"] = dagster_breakdown(home, res["started_at_unix"], res["wall_s"], exclude_runs)
    except Exception as exc:  # noqa: BLE001 - a broken instance must not lose the other figures
        res["dagster"] = {"error": f"{type(exc).__name__}: {exc}"}
    msgs = res["crm"].get("messages") if isinstance(res["crm"].get("messages"), int) else None
    _rates(res, sc, msgs)
    if sc.crm != "sqlite":
        with psycopg.connect(db_url(db)) as conn:
            row = conn.execute("SELECT extract(epoch FROM plan_time)::bigint, extract(epoch FROM window_start)::bigint "
                               "FROM import_plans ORDER BY plan_time DESC LIMIT 1").fetchone()
        if row:
            res["plan"] = {"plan_time": row[0], "window_start": row[1], "window_end": row[0]}
    return res


# ----------------------------------------------------------------------------------------------- the floor
def measure_floor(sc: Scenario, sim: Simulator, db: str, workdir: Path, label: str) -> dict:
    """One bench/floor_importer.py process against `sim`, into the fresh PostgreSQL database `db`."""
    sim.reset_stats()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_") and k not in ("DATABASE_URL",)}
    env.update(CODE_ENV, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(FLOOR), CHANNEL, "--waha-url", sim.url, "--database-url", db_url(db),
           "--days", str(sc.days), "--concurrency", str(_concurrency(sc)),
           "--page-size", os.environ.get("WAHA_PAGE_SIZE", "500")]
    log_path = workdir / f"floor-{label}.log"
    res = measure_process(cmd, env, workdir, log_path, sim, (db,))
    res["requests"] = _requests(sim)
    summary: dict = {}
    for line in reversed(res["log_tail"]):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    res["summary"] = summary
    res["crm"] = {t: summary.get(t) for t in CRM_TABLES}
    res["plan"] = {k: summary.get(k) for k in ("plan_time", "window_start", "window_end")}
    _rates(res, sc, summary.get("messages"))
    return res


# ----------------------------------------------------------------------------------------------- a scenario
def run_scenario(sc: Scenario, workdir: Path) -> list[dict]:
    """`OPTIONS.runs` runs of the product and (with OPTIONS.floor) of the floor, alternating; then the rerun.
    One row per scenario with every run, plus a `<name>-rerun` row when asked."""
    print(f"\n== {sc.name}: {sc.chats} chats, ~{sc.messages} messages, --days {sc.days}, latency "
          f"{sc.latency_ms}+U(0,{sc.jitter_ms}) ms, max_concurrent {sc.max_concurrent}, CRM {sc.crm}", flush=True)
    db = f"waha_bench_{sc.name.replace('-', '_')}"
    fdb = f"{db}_floor"
    row: dict = {"scenario": sc.name, "chats": sc.chats, "target_messages": sc.messages, "days": sc.days,
                 "crm": sc.crm, "engine": sc.engine, "product_runs": [], "floor_runs": [], "exactness": []}
    rows = [row]
    sim = None
    homes: list[Path] = []
    try:
        sim = Simulator(sc, workdir)
        print(f"   simulator up in {sim.startup_s:.1f} s (RSS {sim.rss_mb} MB) at {sim.url}", flush=True)
        row["faults"] = sim.configure(sc.latency_ms, sc.jitter_ms, sc.max_concurrent)
        row["dataset"] = sim.dataset()["sessions"][CHANNEL]
        row["simulator_startup_s"] = round(sim.startup_s, 2)
        row["simulator_rss_mb_after_build"] = sim.rss_mb
        for i in range(OPTIONS.runs):
            order = ("product", "floor") if i % 2 == 0 else ("floor", "product")
            product = floor = None
            for who in order:
                if who == "floor" and not OPTIONS.floor:
                    continue
                if who == "product":
                    home = Path(tempfile.mkdtemp(prefix=f"dh-{sc.name}-{i + 1}-", dir=workdir))
                    homes.append(home)
                    if sc.crm != "sqlite":
                        recreate_db(db)
                    product = measure_product(sc, sim, db, home, workdir, f"{sc.name}-{i + 1}", set())
                    row["product_runs"].append(product)
                    _progress(sc.name, "product", i, product)
                    if i == 0 and sc.rerun and product["exit_code"] == 0 and sc.crm != "sqlite":
                        rows.append(_rerun(sc, sim, db, home, workdir, product, row))
                else:
                    recreate_db(fdb)
                    floor = measure_floor(sc, sim, fdb, workdir, f"{sc.name}-{i + 1}")
                    row["floor_runs"].append(floor)
                    _progress(sc.name, "floor", i, floor)
            if product and floor and product["exit_code"] == 0 and floor["exit_code"] == 0 and sc.crm != "sqlite":
                check = exactness(sc, sim, db, fdb, product, floor)
                row["exactness"].append(check)
                print(f"   exactness run {i + 1}: {check['verdict']}", flush=True)
            if not OPTIONS.keep_db or i + 1 < OPTIONS.runs:
                drop_db(fdb)
                if sc.crm != "sqlite":
                    drop_db(db)
    except Exception as exc:  # noqa: BLE001 - report the scenario as failed and move on
        print(f"   {sc.name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if sim is not None:
            sim.stop()
        if not OPTIONS.keep_db:
            drop_db(db)
            drop_db(fdb)
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)
    row["product"] = aggregate(row["product_runs"])
    row["floor"] = aggregate(row["floor_runs"])
    return rows


def exactness(sc: Scenario, sim: Simulator, db: str, fdb: str, product: dict, floor: dict) -> dict:
    """The floor's CRM against the product's (natural row content), and both against the simulator's truth when
    the dataset is small enough to fetch it."""
    starts = [(product.get("plan") or {}).get("window_start"), (floor.get("plan") or {}).get("window_start")]
    since = None if starts[0] == starts[1] or None in starts else max(starts) + SESSION_TIMEOUT_S
    a, b = crm_compare.natural_digests(db_url(db), since), crm_compare.natural_digests(db_url(fdb), since)
    out: dict = {"floor_vs_product": crm_compare.same_rows(a, b), "since": since,
                 "rows": {t: [a[t]["rows"], b[t]["rows"]] for t in CRM_TABLES}}
    if sc.messages <= TRUTH_MAX_MESSAGES and product.get("plan") and floor.get("plan"):
        for who, url, plan in (("product", db_url(db), product["plan"]), ("floor", db_url(fdb), floor["plan"])):
            truth = sim.truth(plan["window_start"], plan["window_end"], plan["plan_time"])
            out[f"{who}_vs_truth"] = crm_compare.against_truth(url, truth)
    same = all(v for k, v in out["floor_vs_product"].items() if k != "open_sessions")
    truths = [all(v for k, v in out[k].items() if k != "truth_rows") for k in ("product_vs_truth", "floor_vs_truth")
              if k in out]
    out["verdict"] = ((f"floor = product (from {since})" if since else "floor = product") if same else "floor != product: " + ", ".join(
        t for t, v in out["floor_vs_product"].items() if v is False)) + (
        f"; truth: {'both exact' if all(truths) else 'DIFFERS'}" if truths else "")
    out["exact"] = same and all(truths)
    return out


def _rerun(sc: Scenario, sim: Simulator, db: str, home: Path, workdir: Path, first: dict, row: dict) -> dict:
    """The product's second import of the unchanged channel into the same CRM and instance."""
    time.sleep(1.5)  # let the first import's backends flush their table stats
    copy_crm_tables(db)
    before = crm_snapshot(db)
    again = measure_product(sc, sim, db, home, workdir, f"{sc.name}-rerun",
                            set(first.get("dagster", {}).get("run_ids", [])))
    wait_stats_flushed(db)
    after = crm_snapshot(db)
    diff = snapshot_diff(before, after)
    crm_changes = {t: d for t, d in diff.items() if t in CRM_TABLES}
    again["rerun_of"] = sc.name
    again["rerun_wall_ratio"] = round(again["wall_s"] / first["wall_s"], 4) if first["wall_s"] else None
    again["rows_changed"] = {t: d["inserted"] + d["updated"] + d["deleted"] for t, d in crm_changes.items()}
    again["rows_changed_total"] = sum(again["rows_changed"].values())
    again["content_unchanged"] = all(d["same_content"] for d in crm_changes.values())
    again["table_diff"] = diff
    changed = [t for t, d in crm_changes.items() if not d["same_content"] or d["inserted"] + d["updated"]
               + d["deleted"]]
    if changed:
        again["changed_rows"] = changed_rows(db, changed)
        for t in changed:
            c = again["changed_rows"][t]
            print(f"   {t}: {c['rows']} row(s) differ, columns {c['columns']}; e.g. {c['examples'][:1]}", flush=True)
    _progress(f"{sc.name}-rerun", "product", 0, again)
    return {"scenario": f"{sc.name}-rerun", "chats": sc.chats, "target_messages": sc.messages, "days": sc.days,
            "crm": sc.crm, "engine": sc.engine, "dataset": row.get("dataset"), "product_runs": [again],
            "floor_runs": [], "product": aggregate([again]), "floor": aggregate([]), "rerun": True}


# ----------------------------------------------------------------------------------------------- aggregation
AGGREGATED = ("wall_s", "messages_per_s", "peak_tree_rss_mb", "peak_tree_pss_mb", "peak_rss_mb", "first_request_s",
              "cpu_importer_s", "cpu_sim_s", "wall_over_t0", "t0_s")


def aggregate(runs: list[dict]) -> dict:
    """Median, min and max of each figure over the successful runs."""
    ok = [r for r in runs if r.get("exit_code") == 0]
    out: dict = {"runs": len(runs), "ok_runs": len(ok)}
    for key in AGGREGATED:
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    if ok:
        out["messages"] = ok[0]["crm"].get("messages")
        out["requests"] = statistics.median(r["requests"]["total"] for r in ok)
        out["max_sample_gap_s"] = max(r["processes"]["max_sample_gap_s"] for r in ok)
        out["sample_gaps_over_0.2_s"] = sum(r["processes"].get("gaps_over_0.2_s", 0) for r in ok)
        out["cpu_pg_s"] = statistics.median(
            r["cpu_pg"]["all_s"] if not r["cpu_pg"]["other_activity"] else r["cpu_pg"]["ours_plus_aux_s"] for r in ok)
        out["others_cpu_s"] = statistics.median(r["machine_cpu"]["others_s"] for r in ok)
    if ok and "dagster" in ok[0]:
        shares = [r["dagster"].get("outside_chunk_share") for r in ok if r.get("dagster")]
        shares = [s for s in shares if s is not None]
        if shares:
            out["outside_chunk_share"] = statistics.median(shares)
    return out


def _progress(name: str, who: str, i: int, r: dict) -> None:
    print(f"   {name} {who} run {i + 1}: exit {r['exit_code']}{' TIMEOUT' if r['timed_out'] else ''}, "
          f"wall {r['wall_s']:.2f} s, requests {r['requests']['total']}, messages {r['crm'].get('messages')}, "
          f"tree peak RSS {r['peak_tree_rss_mb']} MB / PSS {r['peak_tree_pss_mb']} MB, first request "
          f"{r['first_request_s']} s", flush=True)
    if r["exit_code"] != 0:
        print("   log tail:\n      " + "\n      ".join(r["log_tail"]), flush=True)


# ----------------------------------------------------------------------------------------------- Dagster
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
