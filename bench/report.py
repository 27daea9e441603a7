"""What is printed and kept: the product-vs-floor table (console and Markdown), where the product's wall time goes,
the targets met or missed, the machine, and the JSON file with every figure of every run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import psycopg
from environment import PG_ADMIN, REPO

IMPORTERS = ("product", "floor")


def _mmm(agg: dict, key: str, spec: str = ".1f", scale: float = 1.0) -> str:
    """median [min-max] of one aggregated figure, '-' when absent."""
    v = agg.get(key)
    if not v:
        return "-"
    med, lo, hi = (format(v[k] * scale, spec) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} [{lo}-{hi}]"


def _exact(row: dict) -> str:
    checks = row.get("exactness") or []
    if not checks:
        return "-"
    if all(c["exact"] for c in checks):
        truth = any("floor_vs_truth" in c for c in checks)
        since = any(c.get("since") for c in checks)
        return "= product" + (" (common window)" if since else "") + (" = truth" if truth else "")
    return "; ".join(sorted({c["verdict"] for c in checks if not c["exact"]}))


def lines(rows: list[dict]) -> list[list[str]]:
    """One line per scenario and importer."""
    out = []
    for r in rows:
        if "error" in r and not r.get("product_runs"):
            out.append([r["scenario"], "ERROR: " + r["error"].splitlines()[0][:100]] + [""] * 10)
            continue
        for who in IMPORTERS:
            agg = r.get(who) or {}
            if not agg.get("runs"):
                continue
            name = r["scenario"] if who == "product" else ""
            out.append([
                name, who, f"{agg['ok_runs']}/{agg['runs']}", _fmt_int(agg.get("messages")),
                _fmt_int(agg.get("requests")), _mmm(agg, "wall_s", ".2f"), _mmm(agg, "messages_per_s", ".0f"),
                _mmm(agg, "peak_tree_rss_mb", ".0f"), _mmm(agg, "peak_tree_pss_mb", ".0f"),
                _mmm(agg, "first_request_s", ".2f"), _mmm(agg, "cpu_importer_s", ".1f"),
                _exact(r) if who == "floor" else "",
            ])
    return out


HEAD = ["scenario", "importer", "runs ok", "messages", "WAHA requests", "wall s", "msgs/s", "tree peak RSS MB",
        "tree peak PSS MB", "first WAHA request s", "importer CPU s", "floor rows"]


def _fmt_int(v: float | None) -> str:
    return "-" if v is None else f"{int(v):,}"


def table(rows: list[dict]) -> str:
    body = lines(rows)
    widths = [max(len(h), *(len(l[i]) for l in body)) if body else len(h) for i, h in enumerate(HEAD)]
    out = ["  ".join(h.ljust(w) for h, w in zip(HEAD, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip() for l in body]
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(c or " " for c in l) + " |" for l in lines(rows)]
    return "\n".join(out)


def breakdown(rows: list[dict]) -> str:
    """Where the product's wall time outside chunk work goes (its first successful run per scenario, seconds)."""
    head = ["scenario", "wall", "chunk steps", "outside", "start-up", "plan step", "in-run bookkeeping",
            "between runs", "after last run", "runs"]
    body = []
    for r in rows:
        run = next((p for p in r.get("product_runs", []) if p.get("exit_code") == 0), None)
        d = run.get("dagster") if run else None
        if not d or "error" in d:
            continue
        body.append([r["scenario"], f"{run['wall_s']:.2f}", f"{d['chunk_step_s']:.2f}", f"{d['outside_chunk_s']:.2f}",
                     _f(d["startup_s"]), f"{d['plan_step_s']:.2f}", f"{d['run_bookkeeping_s']:.2f}",
                     _f(d["between_runs_s"]), _f(d["shutdown_s"]), f"{d['plan_runs']}+{d['chunk_runs']}"])
    if not body:
        return ""
    widths = [max(len(h), *(len(l[i]) for l in body)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in body]
    return "\n".join(out)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _med(agg: dict, key: str) -> float | None:
    v = agg.get(key)
    return v["median"] if v else None


def targets(rows: list[dict]) -> list[str]:
    """Each target with the measured figures (medians), met or missed."""
    by = {r["scenario"]: r for r in rows if r.get("product", {}).get("ok_runs")}
    out = []

    def check(name: str, ok: bool, figure: str) -> None:
        out.append(f"[{'met' if ok else 'MISSED'}] {name}: {figure}")

    def peak(name: str, r: dict, limit: float) -> None:
        p = r["product"]
        pss, rss = _med(p, "peak_tree_pss_mb"), _med(p, "peak_tree_rss_mb")
        check(f"{name} tree peak PSS <= {limit:.0f} MB", pss is not None and pss <= limit, f"{pss:.0f} MB")
        check(f"{name} tree peak RSS <= {limit:.0f} MB", rss is not None and rss <= limit, f"{rss:.0f} MB")

    if s := by.get("scale"):
        size = f"scale ({s['product'].get('messages') or 0:,} messages)"
        peak(size, s, 300)
        pm, fm = _med(s["product"], "messages_per_s"), _med(s.get("floor") or {}, "messages_per_s")
        if pm and fm:
            check(f"{size}: product msgs/s >= 1.5x floor's", pm >= 1.5 * fm,
                  f"{pm:.0f} vs {fm:.0f} msgs/s = {pm / fm:.2f}x")
    if s := by.get("seed"):
        peak("seed", s, 250)
        p, f = s["product"], s.get("floor") or {}
        wall, t0 = _med(p, "wall_s"), _med(p, "t0_s")
        if wall and t0:
            check("seed wall <= 1.5 x T0", wall <= 1.5 * t0, f"{wall:.2f} s vs T0 {t0:.2f} s = {wall / t0:.2f} x T0")
        fwall = _med(f, "wall_s")
        if wall and fwall:
            check("seed wall <= floor's", wall <= fwall, f"{wall:.2f} s vs {fwall:.2f} s")
    if s := by.get("scale-sqlite"):
        p = s["product"]
        for key, label in (("peak_tree_pss_mb", "PSS"), ("peak_tree_rss_mb", "RSS")):
            v = _med(p, key)
            check(f"scale-sqlite ({p.get('messages') or 0:,} messages) tree peak {label} <= 300 MB", v is not None and v <= 300, f"{v:.0f} MB")
    for name, r in by.items():
        if r.get("rerun"):
            run = r["product_runs"][0]
            check(f"{name} zero rows changed", run["rows_changed_total"] == 0 and run["content_unchanged"],
                  f"{run['rows_changed_total']} ({run['rows_changed']}), content "
                  f"{'unchanged' if run['content_unchanged'] else 'DIFFERS'}")
            continue
        v = r["product"].get("first_request_s")
        if v:
            check(f"{name} process start -> first WAHA request <= 1 s", v["median"] <= 1.0,
                  f"{v['median']:.2f} s [{v['min']:.2f}-{v['max']:.2f}]")
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
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    pg_version = shared_buffers = None
    try:
        with psycopg.connect(PG_ADMIN) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
            shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
    except psycopg.Error:
        pass
    mem_kb = grab("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(), "cpu_model": grab("/proc/cpuinfo", "model name"),
        "mem_total_mb": round(int(mem_kb.split()[0]) / 1024) if mem_kb else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": [l for l in git("status", "--porcelain", "--", "waha_pipeline", "bench").splitlines() if l],
        "postgres": pg_version, "pg_shared_buffers": shared_buffers,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "env": {k: v for k, v in os.environ.items() if k in ("WAHA_CONCURRENCY", "WAHA_PAGE_SIZE")},
    }


def write_json(path: Path, doc: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({**doc, "scenarios": rows, "targets": targets(rows)}, indent=2, default=str))


def print_all(rows: list[dict]) -> None:
    print()
    print(table(rows))
    print()
    print(breakdown(rows))
    print()
    if any(p.get("cpu_pg", {}).get("other_activity") for r in rows for p in r.get("product_runs", [])):
        print("PostgreSQL CPU in the JSON: other databases were active during some imports (`ours_plus_aux_s`).")
    for line in targets(rows):
        print(line)
    print("\nMarkdown:\n")
    print(markdown(rows))
    sys.stdout.flush()
