"""Client CPU per WAHA message-page request with each HTTP transport WahaClient could use.

    .venv/bin/python bench/http_transports.py [--runs 5] [--chats 200] [--messages 300000] [--concurrency 32]
                                              [--options a,b,...] [--code HEAD] [--wait-load 1.5:600] [--json FILE]

Why: WahaClient uses httpx's stock transport in pools of 4 connections taken in turn (waha/connections.py; the
`httpx-pools4` option, marked `*`); this measures its CPU per page request against the other maintained library
options on the same workload. One simulator (`waha-pipeline simulate`, its own process) serves every run; each run
is a fresh Python process (`--child`) that builds a WahaClient(concurrency=32) with one transport injected
(`transport=`; for `httpx-pools4` none: the client's own pools), lists the chats, then reads every chat's
messages (`read_many` in groups of 50 chats, 500 messages a page, the chat list's last-message times as evidence,
like a chunk of the importer; no `encode`, so the client parses each page and keeps the dicts) on a uvloop loop
whose thread is declared to sniffio, as in the importer's fetch loop. Only the reads are timed: process CPU
(time.process_time: user + system of every thread) and wall. Options are run in a rotated order each round; "vs
product" is the median over the rounds of an option's CPU / `httpx-pools4`'s CPU in the same round.

The forks (httpx2, httpxyz) have their own Request/Response classes, so their transports are wrapped in an adapter
that copies the request head and hands the raw body stream through; `httpx-adapter` wraps httpx's own transport in
the same adapter to show what the adapter itself costs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import environment as bench  # bench/environment.py: simulator process helpers, --code snapshots
from sampling import proc_cpu

SESSION = "demo"
CHUNK_CHATS = 50  # the importer's default --chunk-size
PAGE_SIZE = 500  # WAHA_PAGE_SIZE default
KEEPALIVE_S = 30.0  # connections.KEEPALIVE_EXPIRY_S
PRODUCT = "httpx-pools4"  # what WahaClient builds itself

OPTIONS: dict[str, str] = {
    "httpx": "httpx.AsyncHTTPTransport untouched (httpcore + anyio), one pool of `concurrency` connections",
    "httpx-pools4": "httpx.AsyncHTTPTransport untouched, pools of 4 taken in turn: WahaClient's own (none injected)",
    "httpx-aiohttp": "httpx_aiohttp.AiohttpTransport (aiohttp's connector), one pool",
    "httpx2": "httpx2.AsyncHTTPTransport (httpcore2) through the adapter, one pool",
    "httpxyz": "httpxyz.AsyncHTTPTransport (httpcorexyz) through the adapter, one pool",
    "httpx-adapter": "httpx.AsyncHTTPTransport through the same adapter (the adapter's own cost), one pool",
}
PACKAGES: dict[str, list[str]] = {
    "httpx": ["httpx", "httpcore", "anyio"],
    "httpx-pools4": ["httpx", "httpcore", "anyio"],
    "httpx-aiohttp": ["httpx-aiohttp", "aiohttp"],
    "httpx2": ["httpx2", "httpcore2", "anyio"],
    "httpxyz": ["httpxyz", "httpcorexyz", "anyio"],
    "httpx-adapter": ["httpx", "httpcore"],
}


# ----------------------------------------------------------------------------------------------- child side
def _build_transport(option: str, concurrency: int) -> Any:
    import httpx

    def limits(mod: ModuleType, n: int) -> Any:
        return mod.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=KEEPALIVE_S)

    if option == PRODUCT:
        return None
    if option == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits(httpx, concurrency))
    if option == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits(httpx, concurrency))
    if option in ("httpx2", "httpxyz", "httpx-adapter"):
        mod = importlib.import_module("httpx" if option == "httpx-adapter" else option)
        return _Adapter(mod, mod.AsyncHTTPTransport(limits=limits(mod, concurrency)))
    raise SystemExit(f"unknown option {option!r}")


def _adapter_class() -> type:
    import httpx

    class ForeignStream(httpx.AsyncByteStream):
        def __init__(self, response: Any) -> None:
            self._response = response

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._response.stream:  # raw (not decoded) bytes: httpx decodes them
                yield chunk

        async def aclose(self) -> None:
            await self._response.aclose()

    class Adapter(httpx.AsyncBaseTransport):
        """An httpx transport made of another httpx-like package's transport: the request head is copied (one URL
        parse), the response body is streamed through undecoded."""

        def __init__(self, mod: ModuleType, inner: Any) -> None:
            self._mod, self._inner = mod, inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            foreign = self._mod.Request(request.method, str(request.url), headers=request.headers.raw,
                                        content=await request.aread() or None, extensions=request.extensions)
            response = await self._inner.handle_async_request(foreign)
            return httpx.Response(response.status_code, headers=response.headers.raw,
                                  stream=ForeignStream(response), extensions=response.extensions)

        async def aclose(self) -> None:
            await self._inner.aclose()

    return Adapter


_Adapter: Any = None


def _last_message_at(raw: dict) -> int | None:
    """The chat list's last-activity time, read as planning does (domain/planning.py)."""
    value = raw.get("conversationTimestamp", raw.get("timestamp"))
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _child_work(url: str, option: str, concurrency: int) -> dict[str, Any]:
    from waha_pipeline.waha.client import WahaClient
    from waha_pipeline.waha.models import chat_id_of

    transport = _build_transport(option, concurrency)
    used = type(transport).__name__ if transport is not None else "WahaClient's own pools"
    async with WahaClient(url, concurrency=concurrency, transport=transport) as client:
        chats = await client.list_chats(SESSION)
        ids = [i for i in map(chat_id_of, chats) if i is not None]
        last_at = {chat_id_of(c): _last_message_at(c) for c in chats}
        lte = max([int(time.time())] + [t for t in last_at.values() if t is not None]) + 1
        before = client.stats()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        messages = 0
        for start in range(0, len(ids), CHUNK_CHATS):
            group = ids[start:start + CHUNK_CHATS]
            reads = await client.read_many(SESSION, group, gte=None, lte=lte, page_size=PAGE_SIZE, last_at=last_at)
            messages += sum(len(r.items) for r in reads.values())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        after = client.stats()
    requests = after.requests_by_kind.get("messages", 0) - before.requests_by_kind.get("messages", 0)
    return {"option": option, "transport": used, "cpu_s": cpu, "wall_s": wall, "requests": requests,
            "all_requests": after.requests - before.requests, "messages": messages, "chats": len(ids),
            "retries": after.retries - before.retries}


def child(url: str, option: str, concurrency: int) -> None:
    global _Adapter
    _Adapter = _adapter_class()
    import sniffio
    import uvloop

    sniffio.thread_local.name = "asyncio"  # as process_tuning.declare_asyncio_thread does for the fetch loop
    loop = uvloop.new_event_loop()
    try:
        result = loop.run_until_complete(_child_work(url, option, concurrency))
    finally:
        loop.close()
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- parent side
def versions(options: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for opt in options:
        parts = []
        for pkg in PACKAGES[opt]:
            try:
                parts.append(f"{pkg} {importlib.metadata.version(pkg)}")
            except importlib.metadata.PackageNotFoundError:
                parts.append(f"{pkg} missing")
        out[opt] = ", ".join(parts)
    return out


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_load(spec: str | None) -> dict[str, float]:
    """Wait (up to a deadline) for the 1-minute load to drop below a threshold: `THRESHOLD:SECONDS`."""
    start = time.monotonic()
    if spec:
        threshold, seconds = (float(x) for x in spec.split(":"))
        while load1() >= threshold and time.monotonic() - start < seconds:
            time.sleep(5)
    return {"load1": load1(), "waited_s": round(time.monotonic() - start, 1)}


class Sim:
    def __init__(self, chats: int, messages: int, workdir: Path) -> None:
        self.port = bench.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "sim.log", "wb")  # noqa: SIM115 - open while the simulator runs
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_")}
        env.update(bench.CODE_ENV)
        cmd = [bench.WAHA, "simulate", "--port", str(self.port), "--chats", str(chats), "--messages",
               str(messages), "--session", SESSION]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                     start_new_session=True)
        deadline = time.monotonic() + bench.SIM_START_TIMEOUT_S
        while True:  # an external process: poll its readiness with a deadline
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}; see {workdir / 'sim.log'}")
            try:
                bench.http("GET", f"{self.url}/ping", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator did not answer /ping") from None
                time.sleep(0.2)

    def cpu(self) -> float:
        c = proc_cpu(self.proc.pid)
        return c[0] if c else float("nan")

    def stop(self) -> None:
        bench.terminate(self.proc)
        self.log.close()


def run_child(sim: Sim, option: str, concurrency: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHA_")}
    env.update(bench.CODE_ENV)
    cmd = [sys.executable, __file__, "--child", option, "--url", sim.url, "--concurrency", str(concurrency)]
    bench.http("POST", f"{sim.url}/_sim/reset-stats", {})
    sim_cpu0 = sim.cpu()
    load = load1()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{option}: child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["sim_cpu_s"] = sim.cpu() - sim_cpu0
    result["sim_messages_requests"] = bench.http("GET", f"{sim.url}/_sim/stats").get("messages")
    result["load1_before"] = load
    result["cpu_ms_per_request"] = 1000 * result["cpu_s"] / result["requests"]
    result["requests_per_s"] = result["requests"] / result["wall_s"]
    return result


def summarise(rows: list[dict[str, Any]], options: list[str], vers: dict[str, str]) -> str:
    def fmt(values: list[float], spec: str) -> str:
        return f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"

    product = {r["round"]: r["cpu_s"] for r in rows if r["option"] == PRODUCT}
    lines = ["| option | version | client CPU ms / message request | vs product | wall s | requests/s | runs |",
             "|---|---|---|---|---|---|---|"]
    for opt in options:
        mine = [r for r in rows if r["option"] == opt]
        if not mine:
            continue
        ratios = [r["cpu_s"] / product[r["round"]] for r in mine if r["round"] in product]
        name = f"`{opt}`" + (" *" if opt == PRODUCT else "")
        lines.append(f"| {name} | {vers[opt]} | {fmt([r['cpu_ms_per_request'] for r in mine], '.3f')} | "
                     f"{fmt(ratios, '.2f') if ratios else '-'} | {fmt([r['wall_s'] for r in mine], '.2f')} | "
                     f"{fmt([r['requests_per_s'] for r in mine], '.0f')} | {len(mine)} |")
    lines.append(f"\n* {PRODUCT}: what WahaClient uses (waha/connections.py)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"any of {', '.join(OPTIONS)}")
    parser.add_argument("--code", help="measure waha_pipeline/ as committed at this git ref")
    parser.add_argument("--wait-load", help="THRESHOLD:SECONDS, wait before each round for the 1-min load")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.url, args.child, args.concurrency)
        return 0
    options = args.options.split(",")
    for opt in options:
        if opt not in OPTIONS:
            parser.error(f"unknown option {opt!r}")
    vers = versions(options)
    workdir = Path(tempfile.mkdtemp(prefix="waha-bench-http-"))
    code = bench.snapshot_code(args.code, workdir) if args.code else None
    sim = Sim(args.chats, args.messages, workdir)
    rows: list[dict[str, Any]] = []
    rounds: list[dict[str, float]] = []
    try:
        run_child(sim, options[0], args.concurrency)  # warm-up: the simulator's first pages, page cache
        for i in range(args.runs):
            rounds.append(wait_load(args.wait_load))
            order = options[i % len(options):] + options[: i % len(options)]
            for opt in order:
                r = run_child(sim, opt, args.concurrency)
                r["round"] = i + 1
                rows.append(r)
                print(f"round {i + 1} {opt:15s} {r['cpu_ms_per_request']:.3f} ms/req  wall {r['wall_s']:.2f} s  "
                      f"{r['requests']} msg req ({r['messages']} messages, {r['retries']} retries)  "
                      f"load {r['load1_before']:.2f}  {r['transport']}", flush=True)
    finally:
        sim.stop()
    print()
    print(summarise(rows, options, vers))
    loads = [r["load1_before"] for r in rows]
    print(f"\n1-min load before each run: median {statistics.median(loads):.2f} [{min(loads):.2f}-{max(loads):.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "versions": vers, "code": code, "rounds": rounds,
                                               "nproc": os.cpu_count(), "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
