"""Cost of storing Dagster runs' events in the embedded SQLite instance: Dagster's stock SqliteEventLogStorage vs
the project's PooledSqliteEventLogStorage (waha_pipeline/instance/sqlite_event_log.py).

    .venv/bin/python bench/event_log.py [--runs 5] [--dagster-runs 20] [--lines 20] [--code HEAD]
                                        [--wait-load 1.5:600] [--json FILE]

Why: the pooled storage exists because the stock one opened a new engine and connection per event. Each
measurement is a fresh Python process with a fresh DAGSTER_HOME whose dagster.yaml is the CLI's
DEFAULT_INSTANCE_YAML (`pooled`) or the same text without its event_log_storage block (`stock`), and
DAGSTER_EVENT_BATCH_SIZE=1000 as the CLI sets it. It materializes a job of three assets `--dagster-runs` times
(one run each, in process, like a chunk run's steps: planned materializations, step events, materializations,
and `--lines` context.log.info lines from the first asset), timing only the runs: process CPU
(time.process_time) and wall. Figure: ms per stored event (events counted in the instance afterwards).
Storages alternate between measurements.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import run as bench  # bench/run.py: --code snapshots
from dagster import AssetExecutionContext

STORAGES = ("stock", "pooled")
LINES = int(os.environ.get("BENCH_EVENT_LOG_LINES", "20"))  # set by the parent from --lines


@dg.asset
def first(context: AssetExecutionContext) -> int:
    for i in range(LINES):
        context.log.info(f"line {i}")
    return 1


@dg.asset
def second(first: int) -> int:
    return first + 1


@dg.asset
def third(second: int) -> int:
    return second + 1


def instance_yaml(storage: str) -> str:
    """The CLI's embedded instance configuration, with or without the project's event log storage."""
    from waha_pipeline.cli.commands import DEFAULT_INSTANCE_YAML

    if storage == "pooled":
        return DEFAULT_INSTANCE_YAML
    kept, skipping = [], False
    for line in DEFAULT_INSTANCE_YAML.splitlines():
        if line.startswith("event_log_storage:"):
            skipping = True
            continue
        if skipping and line.startswith("  "):
            continue
        skipping = False
        kept.append(line)
    text = "\n".join(kept) + "\n"
    if "event_log_storage" in text.replace("# The stock SQLite event log", ""):
        raise SystemExit("could not strip event_log_storage from DEFAULT_INSTANCE_YAML")
    return text


def child(dagster_runs: int) -> None:
    instance = dg.DagsterInstance.get()
    storage = type(instance.event_log_storage).__name__
    assets = [first, second, third]
    dg.materialize(assets, instance=instance)  # warm-up run: imports, index shard creation (not timed)
    run_ids = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(dagster_runs):
        result = dg.materialize(assets, instance=instance)
        if not result.success:
            raise SystemExit("a run failed")
        run_ids.append(result.run_id)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    events = sum(len(instance.all_logs(run_id)) for run_id in run_ids)
    print(json.dumps({"storage_class": storage, "cpu_s": cpu, "wall_s": wall, "events": events,
                      "dagster_runs": dagster_runs}), flush=True)


def measure(storage: str, dagster_runs: int, lines: int, workdir: Path, label: str) -> dict[str, Any]:
    home = workdir / f"home-{label}"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(storage))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "WAHA_"))}
    env.update(bench.CODE_ENV, DAGSTER_HOME=str(home), DAGSTER_EVENT_BATCH_SIZE="1000",
               BENCH_EVENT_LOG_LINES=str(lines))
    load = float(Path("/proc/loadavg").read_text().split()[0])
    cmd = [sys.executable, __file__, "--child", "--dagster-runs", str(dagster_runs)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=home, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{storage}: child failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(storage=storage, load1_before=load, cpu_ms_per_event=1000 * r["cpu_s"] / r["events"],
             wall_ms_per_event=1000 * r["wall_s"] / r["events"])
    return r


def wait_load(spec: str | None) -> float:
    start = time.monotonic()
    if spec:
        threshold, seconds = (float(x) for x in spec.split(":"))
        while (float(Path("/proc/loadavg").read_text().split()[0]) >= threshold
               and time.monotonic() - start < seconds):
            time.sleep(5)
    return round(time.monotonic() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dagster-runs", type=int, default=20)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--code", help="measure waha_pipeline/ as committed at this git ref")
    parser.add_argument("--wait-load", help="THRESHOLD:SECONDS, wait before each round for the 1-min load")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.dagster_runs)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="waha-bench-eventlog-"))
    code = bench.snapshot_code(args.code, workdir) if args.code else None
    rows: list[dict[str, Any]] = []
    for i in range(args.runs):
        waited = wait_load(args.wait_load)
        order = STORAGES if i % 2 == 0 else STORAGES[::-1]
        for storage in order:
            r = measure(storage, args.dagster_runs, args.lines, workdir, f"{i + 1}-{storage}")
            r.update(round=i + 1, waited_s=waited)
            rows.append(r)
            print(f"round {i + 1} {storage:6s} ({r['storage_class']}) {r['events']} events: "
                  f"CPU {r['cpu_ms_per_event']:.2f} ms/event, wall {r['wall_ms_per_event']:.2f} ms/event, "
                  f"wall {r['wall_s']:.2f} s  load {r['load1_before']:.2f}", flush=True)

    def fmt(values: list[float], spec: str) -> str:
        return f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"

    print(f"\ndagster {dg.__version__}; {args.dagster_runs} runs x (3 assets, {args.lines} log lines)\n")
    print("| storage | CPU ms / event | wall ms / event | wall s | events | runs |")
    print("|---|---|---|---|---|---|")
    for storage in STORAGES:
        mine = [r for r in rows if r["storage"] == storage]
        print(f"| `{storage}` ({mine[0]['storage_class']}) | {fmt([r['cpu_ms_per_event'] for r in mine], '.2f')} | "
              f"{fmt([r['wall_ms_per_event'] for r in mine], '.2f')} | {fmt([r['wall_s'] for r in mine], '.2f')} | "
              f"{mine[0]['events']} | {len(mine)} |")
    loads = [r["load1_before"] for r in rows]
    print(f"\n1-min load before each measurement: median {statistics.median(loads):.2f} "
          f"[{min(loads):.2f}-{max(loads):.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "code": code, "dagster": dg.__version__,
                                               "nproc": os.cpu_count(), "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
