#!/usr/bin/env python
"""Benchmark harness: the real `waha-pipeline import` process and the floor (bench/floor_importer.py, a plain
asyncio + httpx + COPY importer) side by side, against the simulator and PostgreSQL.

    .venv/bin/python bench/run.py [seed|scale|scale-sqlite|rerun|growth ...] [--runs 3] [--no-floor] [--quick]
                                  [--growth-sizes 1000,10000] [--code HEAD] [--wait-idle 60] [--keep-db] [--out FILE]

Every scenario starts `waha-pipeline simulate` as a separate process and configures its latency / concurrency
through POST /_sim/faults; each run imports the channel with the product (fresh database, fresh DAGSTER_HOME) and
with the floor (fresh database), alternating which goes first. See bench/README.md for what each figure means.
Prints a table (and the same as Markdown) and writes bench/results/<timestamp>.json.

Modules: sampling.py (the import's process tree, PostgreSQL, the machine), environment.py (simulator, databases,
child processes), scenarios.py (what is run and measured), crm_compare.py (floor = product = truth), report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import signal
import sys
import tempfile
from pathlib import Path

import report
import scenarios
from environment import CHILDREN, RESULTS, snapshot_code, terminate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["seed"],
                    help="seed, scale, scale-sqlite (scale with a SQLite CRM), rerun, growth (default: seed)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each importer per scenario (default 3)")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="run the floor importer beside the product in every run (default: yes)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    ap.add_argument("--growth-sizes", default=None, help="comma-separated message counts for `growth`")
    ap.add_argument("--keep-db", action="store_true",
                    help="keep the last run's databases and every DAGSTER_HOME (default: drop them)")
    ap.add_argument("--code", default=None, metavar="REF",
                    help="benchmark the committed waha_pipeline/ at this git ref (e.g. HEAD) instead of the working "
                         "tree, which others may be editing")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each import, wait up to S seconds for the machine to be quiet (<25%% busy for 3 s)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="wrap each product import in `py-spy record` (if installed) writing collapsed stacks to DIR; "
                         "the figures then include py-spy's overhead")
    ap.add_argument("--out", default=None, help="JSON output path (default bench/results/<timestamp>.json)")
    ap.add_argument("--engine", default="gows", choices=("gows", "noweb", "webjs"),
                    help="the simulator's WAHA engine profile for every scenario (default: gows; the floor reads "
                         "GOWS only, so other engines imply --no-floor)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = Path(args.profile).resolve() if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    scenarios.OPTIONS = scenarios.Options(wait_idle_s=args.wait_idle, profile_dir=profile, runs=args.runs,
                                          floor=args.floor and args.engine == "gows", keep_db=args.keep_db)
    sizes = [int(x) for x in args.growth_sizes.split(",")] if args.growth_sizes else None
    todo = [dataclasses.replace(sc, engine=args.engine)
            for sc in scenarios.build_scenarios(args.scenarios, args.quick, sizes)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix=f"waha-bench-{stamp}-"))
    out_path = Path(args.out) if args.out else RESULTS / f"{stamp}.json"
    info = report.machine_info()
    info["code"] = snapshot_code(args.code, workdir) if args.code else {"ref": "working tree", "path": "."}
    print(f"waha-pipeline benchmark {stamp}: {info['nproc']} CPU ({info['cpu_model']}), {info['mem_total_mb']} MB, "
          f"Python {info['python']}, PostgreSQL {info['postgres']}, commit {info['git_commit'][:10]}"
          f"{' (+local changes)' if info['git_dirty_files'] else ''}; code: {info['code']['ref']}"
          f"{' ' + info['code'].get('commit', '')[:10]}; runs {args.runs}, floor "
          f"{'yes' if scenarios.OPTIONS.floor else 'no'}; logs in {workdir}")
    doc = {"timestamp": stamp, "argv": sys.argv[1:], "quick": args.quick, "runs": args.runs, "machine": info,
           "logs": str(workdir)}

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rows: list[dict] = []
    try:
        for sc in todo:
            rows.extend(scenarios.run_scenario(sc, workdir))
            report.write_json(out_path, doc, rows)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        for proc in list(CHILDREN):
            terminate(proc)
    report.print_all(rows)
    report.write_json(out_path, doc, rows)
    print(f"\nJSON: {out_path}")
    runs = [run for r in rows for who in ("product_runs", "floor_runs") for run in r.get(who, [])]
    return 0 if runs and all(run.get("exit_code") == 0 for run in runs) and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
