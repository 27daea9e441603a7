"""Process sampling from /proc: the memory and CPU of an import's whole process tree, PostgreSQL's CPU, the machine.

Why /proc and not psutil: no extra package, and the figures are exactly the kernel's (smaps_rollup for PSS,
/proc/<pid>/task/<tid>/children for the tree) without a library's caching in between.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rss_mb(pid: int) -> float | None:
    """VmRSS of one process in MB, None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def rss_pss_mb(pid: int) -> tuple[float, float] | None:
    """(Rss, Pss) of one process in MB from one read of smaps_rollup, None if it is gone (or a kernel thread)."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
                    break
    except (OSError, ValueError):
        return None
    if rss is None or pss is None:
        return None
    return rss, pss


def children(pid: int) -> set[int]:
    """Direct children of every thread of `pid` (a child belongs to the thread that forked it)."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            found.update(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return found


def descendants(root: int) -> set[int]:
    found: set[int] = set()
    frontier = [root]
    while frontier:
        below = children(frontier.pop()) - found
        found |= below
        frontier.extend(below)
    return found


class TreeMonitor:
    """Memory and CPU of a process and every descendant (Dagster's step processes, the chunk workers' fork server
    and its workers, multiprocessing's resource tracker, log tails), sampled on a fixed period.

    Each sample walks the tree afresh and reads every member's smaps_rollup once: the tree's memory is the SUM of
    the members' Rss and, separately, of their Pss (a page shared by n processes counts 1/n in each Pss, so the Pss
    sum is what the tree really holds; the Rss sum counts shared pages once per process). Kept: the peak of each
    sum, the largest single process's Rss, and the longest gap between two samples (the period is a target: a
    sample of a large tree takes tens of ms, and the next one starts at once if a sample overran).

    The descendants are not reaped by the root (a fork server reaps its workers and may outlive the root by a
    few ms), so `wait4` of the root does not include their CPU: each one's utime+stime is sampled and the last
    value kept (a descendant's last < period s is missed).
    """

    def __init__(self, root: int, period: float = 0.1, limit: float = 0.2) -> None:
        self.root = root
        self.period = period
        self.limit = limit  # gaps longer than this are counted: the figure's resolution was missed then
        self.gaps_over_limit = 0
        self.cpu: dict[int, float] = {}
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_process_rss_mb = 0.0
        self.peak_processes = 1
        self.samples = 0
        self.max_gap_s = 0.0
        self._last: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-monitor")

    def sample(self) -> None:
        below = descendants(self.root)
        rss_sum = pss_sum = 0.0
        members = 0
        for pid in below | {self.root}:
            mem = rss_pss_mb(pid)
            if mem is None:
                continue
            members += 1
            rss_sum += mem[0]
            pss_sum += mem[1]
            self.peak_process_rss_mb = max(self.peak_process_rss_mb, mem[0])
        for pid in below:
            c = proc_cpu(pid)
            if c is not None:
                self.cpu[pid] = c[0]
        now = time.monotonic()
        if self._last is not None:
            self.max_gap_s = max(self.max_gap_s, now - self._last)
            self.gaps_over_limit += now - self._last > self.limit
        self._last = now
        self.samples += 1
        self.peak_rss_mb = max(self.peak_rss_mb, rss_sum)
        self.peak_pss_mb = max(self.peak_pss_mb, pss_sum)
        self.peak_processes = max(self.peak_processes, members)

    def _loop(self) -> None:
        try:  # the sampler runs before the imports it watches when the cores are saturated (needs root)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        except OSError:
            pass
        due = time.monotonic()
        while True:
            self.sample()
            due += self.period
            wait = due - time.monotonic()
            if wait < 0:
                due = time.monotonic()
                wait = 0.0
            if self._stop.wait(wait):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"descendants_cpu_s": round(sum(self.cpu.values()), 3), "descendants": len(self.cpu),
                "peak_tree_rss_mb": round(self.peak_rss_mb, 1), "peak_tree_pss_mb": round(self.peak_pss_mb, 1),
                "peak_process_rss_mb": round(self.peak_process_rss_mb, 1), "peak_processes": self.peak_processes,
                "samples": self.samples, "period_s": self.period, "max_sample_gap_s": round(self.max_gap_s, 3),
                f"gaps_over_{self.limit}_s": self.gaps_over_limit}


class FirstRequestWatch:
    """Seconds from `t0` (just before the import process is spawned) to the first WAHA request the simulator
    counted, by polling its counters every `period` s (the simulator keeps counts, not a timed request log)
    until one shows up; resolution = period plus one counter request."""

    def __init__(self, total: Callable[[], int], t0: float, period: float = 0.01, timeout: float = 120.0) -> None:
        self._total = total
        self.t0 = t0
        self.period = period
        self.timeout = timeout
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="first-request")

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self.t0 < self.timeout:
            try:
                seen = self._total() > 0
            except OSError:
                seen = False
            if seen:
                self.seconds = time.monotonic() - self.t0
                return
            self._stop.wait(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return None if self.seconds is None else round(self.seconds, 3)


# ----------------------------------------------------------------------------------------------- PostgreSQL
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


class PgCpuMonitor:
    """PostgreSQL CPU over a measurement window, two ways.

    all: postmaster own + children's (cutime: backends that exited and were reaped) + every live child,
         delta over the window. Exact for the whole server, but includes other databases' work.
    ours: backends whose cmdline names one of our databases, sampled every `interval` s (last value seen; a
         backend's last < interval s before it exits is missed), plus the auxiliary processes (walwriter,
         checkpointer, bgwriter, autovacuum launcher...) that serve every database.
    """

    def __init__(self, dbnames: str | tuple[str, ...], interval: float = 0.1) -> None:
        self.dbnames = (dbnames,) if isinstance(dbnames, str) else tuple(dbnames)
        self.interval = interval
        self.postmaster = find_postmaster()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.first: dict[int, float] = {}  # pid -> cpu at first sight (0 for backends born in the window)
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.foreign_backends: set[int] = set()
        self.all_start = 0.0

    def _total_all(self) -> float:
        if self.postmaster is None:
            return 0.0
        own = proc_cpu(self.postmaster)
        total = (own[0] + own[1]) if own else 0.0
        for pid in children(self.postmaster):
            c = proc_cpu(pid)
            if c:
                total += c[0]
        return total

    def _sample(self, initial: bool = False) -> None:
        if self.postmaster is None:
            return
        for pid in children(self.postmaster):
            c = proc_cpu(pid)
            if c is None:
                continue
            if self.kind.get(pid, "other") == "other":  # re-read: a new backend names its database only
                cmd = cmdline(pid)                          # after authentication rewrites its title
                if any(f" {db} " in f" {cmd} " for db in self.dbnames):
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
