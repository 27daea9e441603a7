"""A real Dagster deployment for tests: dagster-webserver + dagster-daemon over the root dagster.yaml (PostgreSQL
storage), in their own process groups, and the GraphQL queries the operations docs give to automation.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's, driven by Playwright
BIN = Path(os.environ.get("VIRTUAL_ENV") or Path(__import__("sys").executable).parent.parent) / "bin"

PARTITION_STATUS = """
query PartitionStatus($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions materializingPartitions unmaterializedPartitions
        }
      }
    }
  }
}"""

LAUNCH_BACKFILL = """
mutation Rerun($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 100) { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

RUN_EVENTS = """
query RunEvents($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_signals() -> None:
    """Background shells may start us with SIGINT/SIGTERM ignored; the services must be stoppable."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class Stack:
    port: int
    home: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def partitions(self, asset: str) -> dict[str, set[str]]:
        node = self.graphql(PARTITION_STATUS, path=[asset])["assetNodeOrError"]
        statuses = node["assetPartitionStatuses"]
        return {
            "materialized": set(statuses["materializedPartitions"]),
            "failed": set(statuses["failedPartitions"]),
            "materializing": set(statuses["materializingPartitions"]),
            "missing": set(statuses["unmaterializedPartitions"]),
        }

    def runs(self, **tags: str) -> list[dict[str, Any]]:
        tag_list = [{"key": k, "value": v} for k, v in tags.items()]
        results = self.graphql(RUNS, filter={"tags": tag_list} if tag_list else {})["runsOrError"]["results"]
        for run in results:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return results

    def launch_backfill(self, assets: list[str], partitions: list[str], tags: dict[str, str]) -> str:
        params = {
            "assetSelection": [{"path": [a]} for a in assets],
            "partitionNames": partitions,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "title": "re-run failed chunks",
        }
        result = self.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        return self.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]

    def run_messages(self, run_id: str) -> list[str]:
        events = self.graphql(RUN_EVENTS, runId=run_id)["logsForRun"]["events"]
        return [e.get("message") or "" for e in events]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@contextmanager
def dagster_stack(tmp: Path, dagster_pg_url: str, extra_env: dict[str, str | None]) -> Iterator[Stack]:
    """Webserver + daemon on the root dagster.yaml; the code location from the root workspace.yaml.

    `extra_env` values of None remove the variable from the services' environment.
    """
    home = tmp / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    merged = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": dagster_pg_url, **extra_env}
    env = {k: v for k, v in merged.items() if v is not None}
    port = free_port()
    logs = tmp / "logs"
    logs.mkdir()
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True, preexec_fn=_default_signals)
        stack = Stack(port=port, home=home, env=env)

        def ready() -> bool:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"dagster {name} exited: {(logs / f'{name}.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{stack.url}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the webserver", ready, timeout=90)
        yield stack
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def screenshot(url: str, ready: Callable[[Any], None], path: Path) -> str | None:
    """The page as Chromium renders it, saved to path once `ready(page)` returns, and its text; None when
    Playwright or Chromium is not installed (the rest must still run then: a warning, not a skip)."""
    try:
        import playwright.sync_api as playwright
    except ImportError:
        return None
    if not os.path.exists(CHROMIUM):
        return None
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, wait_until="networkidle")
            ready(page)
            text = page.inner_text("body")
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=False)
        finally:
            browser.close()
    return text
