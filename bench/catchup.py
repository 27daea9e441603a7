#!/usr/bin/env python
"""Catch-up benchmark: what keeping a large, mostly idle channel in step costs.

    .venv/bin/python bench/catchup.py [--chats 10000] [--messages 30000] [--grow-chats 100] [--runs 3]

One `waha-pipeline simulate` process (a channel of --chats chats, ~--messages messages), one fresh PostgreSQL
database and DAGSTER_HOME, and the real `waha-pipeline import demo --days 0` as a child process (bench/run.py's
harness). After a first full import, each run measures:
  (a) catch-up of the unchanged channel: `import` again;
  (b) catch-up after growth: POST /_sim/sessions/demo/grow adds 3 new messages to each of --grow-chats chats
      (a new seed per run), then `import` again.
Per import: wall seconds, WAHA requests by kind (/_sim/stats, reset just before), CRM rows changed (the
pg_stat_user_tables n_tup_ins + n_tup_upd + n_tup_del deltas of contacts, sessions, messages, message_rejects),
whether the CRM content is unchanged (per-table checksum) and whether the CRM's message count equals the
simulator's truth for the latest plan. Prints median [min-max] per figure; writes bench/results/catchup-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import statistics
import sys
import tempfile
import urllib.parse
from pathlib import Path

import environment as bench  # the simulator, database and child-process helpers of bench/run.py
import psycopg
import report
import scenarios

KINDS = ("total", "sessions", "chats", "messages", "lids", "other")


def crm_plan_and_messages(db: str) -> tuple[int, int]:
    with psycopg.connect(bench.db_url(db)) as conn:
        plan_end = conn.execute("SELECT extract(epoch FROM window_end)::bigint FROM import_plans "
                                "ORDER BY plan_time DESC, created_at DESC LIMIT 1").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return int(plan_end), int(messages)


def truth_messages(sim: bench.Simulator, window_end: int) -> int:
    query = urllib.parse.urlencode({"session": bench.CHANNEL, "window_end": window_end})
    return len(bench.http("GET", f"{sim.url}/_sim/truth?{query}", timeout=300)["messages"])


def measured_import(sc: scenarios.Scenario, sim: bench.Simulator, db: str, home: Path, workdir: Path,
                    label: str) -> dict:
    """One import with its requests, CRM row changes and exactness against the truth."""
    bench.wait_stats_flushed(db)  # the previous import's backends have flushed their table counters
    before = bench.crm_snapshot(db) if label != "first" else {}
    sim.reset_stats()
    res = scenarios.run_import(sc, sim, db, home, workdir / f"import-{label}.log")
    stats = sim.stats()
    bench.wait_stats_flushed(db)
    after = bench.crm_snapshot(db)
    diff = bench.snapshot_diff(before, after)
    crm = {t: d for t, d in diff.items() if t in bench.CRM_TABLES}
    plan_end, messages = crm_plan_and_messages(db)
    expected = truth_messages(sim, plan_end)
    row = {
        "label": label, "exit_code": res["exit_code"], "wall_s": res["wall_s"],
        "cpu_importer_s": res["cpu_importer_s"], "requests": {k: stats.get(k, 0) for k in KINDS},
        "chats_with_message_requests": len(stats.get("messages_by_chat") or {}),
        "message_requests_by_chat": stats.get("messages_by_chat") if label != "first" else None,
        "rows_changed": {t: d["inserted"] + d["updated"] + d["deleted"] for t, d in crm.items()},
        "content_unchanged": all(d["same_content"] for d in crm.values()),
        "crm_messages": messages, "truth_messages": expected, "exact_count": messages == expected,
        "log": res["log"], "log_tail": res["log_tail"],
    }
    row["rows_changed_total"] = sum(row["rows_changed"].values())
    print(f"   {label}: exit {row['exit_code']}, wall {row['wall_s']:.2f} s, requests {row['requests']}, "
          f"rows changed {row['rows_changed_total']}, messages {messages} (truth {expected})", flush=True)
    if res["exit_code"] != 0:
        print("   import log tail:\n      " + "\n      ".join(res["log_tail"]), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    def stat(values: list[float]) -> dict:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "runs": len(rows), "wall_s": stat([r["wall_s"] for r in rows]),
        "requests": {k: stat([r["requests"][k] for r in rows]) for k in KINDS},
        "chats_with_message_requests": stat([r["chats_with_message_requests"] for r in rows]),
        "rows_changed": stat([r["rows_changed_total"] for r in rows]),
        "all_exact": all(r["exact_count"] for r in rows), "all_ok": all(r["exit_code"] == 0 for r in rows),
    }


def _cell(s: dict, digits: int = 0) -> str:
    f = f"{{:.{digits}f}}"
    if s["min"] == s["max"]:
        return f.format(s["median"])
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


def table(first: dict, parts: dict[str, dict]) -> str:
    header = ("| import | runs | wall s | requests (sessions / chats / messages / lids) | chats read | "
              "CRM rows changed | exact |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    r = first["requests"]
    lines.append(f"| first, full | 1 | {first['wall_s']:.2f} | {r['total']} ({r['sessions']} / {r['chats']} / "
                 f"{r['messages']} / {r['lids']}) | {first['chats_with_message_requests']} | "
                 f"{first['rows_changed_total']} | {first['exact_count']} |")
    for name, s in parts.items():
        q = s["requests"]
        lines.append(f"| {name} | {s['runs']} | {_cell(s['wall_s'], 2)} | {_cell(q['total'])} ({_cell(q['sessions'])}"
                     f" / {_cell(q['chats'])} / {_cell(q['messages'])} / {_cell(q['lids'])}) | "
                     f"{_cell(s['chats_with_message_requests'])} | {_cell(s['rows_changed'])} | {s['all_exact']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--grow-chats", type=int, default=100, help="chats that get 3 new messages before (b)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engine", default="gows", choices=("gows", "noweb", "webjs"))
    ap.add_argument("--code", default=None, metavar="REF", help="benchmark waha_pipeline/ at this git ref")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--out", default=None, help="JSON output path (default bench/results/catchup-<ts>.json)")
    args = ap.parse_args(argv)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix=f"waha-bench-catchup-{stamp}-"))
    info = report.machine_info()
    info["code"] = bench.snapshot_code(args.code, workdir) if args.code else {"ref": "working tree"}
    sc = scenarios.Scenario("catchup", args.chats, args.messages, days=0, engine=args.engine)
    db = "waha_bench_catchup"
    home = Path(tempfile.mkdtemp(prefix="dh-catchup-", dir=workdir))
    out_path = Path(args.out) if args.out else bench.RESULTS / f"catchup-{stamp}.json"
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"catch-up benchmark {stamp}: {info['nproc']} CPU, {sc.chats} chats, ~{sc.messages} messages, "
          f"{args.runs} runs, growth {args.grow_chats} chats x 3 messages; logs in {workdir}", flush=True)
    doc: dict = {"timestamp": stamp, "argv": sys.argv[1:], "machine": info, "logs": str(workdir)}
    sim = None
    try:
        sim = bench.Simulator(sc, workdir)
        doc["dataset"] = sim.dataset()["sessions"][bench.CHANNEL]
        bench.recreate_db(db)
        first = measured_import(sc, sim, db, home, workdir, "first")
        unchanged: list[dict] = []
        grown: list[dict] = []
        growths: list[dict] = []
        for i in range(args.runs):
            unchanged.append(measured_import(sc, sim, db, home, workdir, f"unchanged-{i + 1}"))
            g = bench.http("POST", f"{sim.url}/_sim/sessions/{bench.CHANNEL}/grow",
                           {"new_messages": 3 * args.grow_chats, "into_chats": args.grow_chats, "seed": 100 + i})
            growths.append({k: g[k] for k in ("at", "seed", "new_messages", "rejects")}
                           | {"chats": len(g["chats"]["new_messages"])})
            grown.append(measured_import(sc, sim, db, home, workdir, f"grown-{i + 1}"))
        parts = {"(a) unchanged channel": summary(unchanged),
                 f"(b) after {args.grow_chats} chats x 3 new messages": summary(grown)}
        doc.update(first=first, unchanged=unchanged, grown=grown, growths=growths, summary=parts)
        text = table(first, parts)
        doc["table"] = text
        print("\n" + text)
    finally:
        if sim is not None:
            sim.stop()
        for proc in list(bench.CHILDREN):
            bench.terminate(proc)
        if not args.keep_db:
            bench.drop_db(db)
            shutil.rmtree(home, ignore_errors=True)
        out_path.write_text(json.dumps(doc, indent=2, default=str))
        print(f"\nJSON: {out_path}")
    rows = [doc["first"], *doc["unchanged"], *doc["grown"]] if "summary" in doc else []
    ok = bool(rows) and all(r["exit_code"] == 0 and r["exact_count"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
