"""Process-wide settings live in waha_pipeline/process_tuning.py and are applied only at process entries.

Static: no module but process_tuning.py makes a process-wide call (gc.freeze, mallopt, Arrow's memory pool, the fork
server's preload, sniffio's thread-local, allocator environment variables ...), and the tuning functions are called
exactly at the entries listed here. Dynamic: the CLI, a Dagster run and a chunk worker, each in a process of its
own, end up tuned (Arrow's system pool, a frozen heap in the fork server the workers come from).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import waha_pipeline

PACKAGE = Path(waha_pipeline.__file__).parent
TUNING_MODULE = "waha_pipeline.process_tuning"
TUNING_FILE = "process_tuning.py"

# Calls that change the whole process, by qualified name once imports are resolved.
FORBIDDEN_CALLS = frozenset({
    "gc.freeze", "gc.unfreeze", "gc.disable", "gc.enable", "gc.set_threshold", "gc.set_debug",
    "sys.setswitchinterval", "sys.setrecursionlimit", "sys.set_int_max_str_digits",
    "ctypes.CDLL", "ctypes.cdll.LoadLibrary", "ctypes.util.find_library",
    "pyarrow.set_memory_pool", "pyarrow.jemalloc_set_decay_ms", "pyarrow.set_cpu_count",
    "pyarrow.set_io_thread_count",
    "multiprocessing.set_start_method", "multiprocessing.set_forkserver_preload",
    "asyncio.set_event_loop_policy", "uvloop.install",
    "os.putenv", "os.nice", "resource.setrlimit",
})
# Methods that change the whole process whatever object they are called on (a multiprocessing context, a libc).
FORBIDDEN_METHODS = frozenset({
    "mallopt", "set_forkserver_preload", "set_start_method", "set_memory_pool", "jemalloc_set_decay_ms",
    "setswitchinterval", "set_threshold",
})
# Environment variables read by allocators, Arrow, the interpreter or native thread pools at start-up.
TUNING_ENV = re.compile(r"^(ARROW_|MALLOC_|MIMALLOC_|JE_MALLOC|PYTHONMALLOC|PYTHONGC|OMP_|OPENBLAS_|MKL_)")

# Where the tuning functions are called: (file under waha_pipeline/, enclosing function) -> functions.
ENTRIES: dict[tuple[str, str], set[str]] = {
    ("cli/main.py", "main"): {"tune_import_process"},
    ("cli/main.py", "_import_commands"): {"long_lived"},
    ("simulator/server.py", "run_in_thread"): {"long_lived"},
    ("simulator/server.py", "serve_forever"): {"long_lived"},
    ("defs/resources.py", "CrmResource.setup_for_execution"): {"tune_import_process"},
    ("importer/workers.py", "_work"): {"tune_chunk_worker"},
    ("importer/fork_server_entry.py", "<module>"): {"tune_fork_server"},
    ("importer/background_loop.py", "BackgroundLoop._run"): {"declare_asyncio_thread"},
}


class _Scan(ast.NodeVisitor):
    """Resolves names through the module's imports (wherever they are) and records process-wide calls and uses of
    the tuning functions, with the enclosing function's qualified name."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.partition(".")[0]] = a.name if a.asname else a.name.partition(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self.scope: list[str] = []
        self.forbidden: list[tuple[str, int, str]] = []  # (scope, line, what)
        self.tuning: set[tuple[str, str]] = set()  # (scope, function)

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def where(self) -> str:
        return ".".join(self.scope) or "<module>"

    def _enter(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _enter

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.partition(".")[0] == "ctypes":
                self.forbidden.append((self.where(), node.lineno, f"import {a.name}"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").partition(".")[0] == "ctypes":
            self.forbidden.append((self.where(), node.lineno, f"from {node.module} import ..."))

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if name in FORBIDDEN_CALLS or method in FORBIDDEN_METHODS:
            self.forbidden.append((self.where(), node.lineno, name or method))
        if name in ("os.environ.setdefault", "os.environ.update", "os.putenv") and node.args:
            key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and TUNING_ENV.match(key.value):
                self.forbidden.append((self.where(), node.lineno, f"{name}({key.value!r})"))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._assigned(target, node.lineno)
        self.generic_visit(node)

    def _assigned(self, target: ast.AST, line: int) -> None:
        name = self.dotted(target.value if isinstance(target, ast.Subscript) else target) or ""
        if name.startswith("sniffio.thread_local"):
            self.forbidden.append((self.where(), line, name))
        if isinstance(target, ast.Subscript) and name == "os.environ":
            key = target.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and TUNING_ENV.match(key.value):
                self.forbidden.append((self.where(), line, f"os.environ[{key.value!r}] ="))

    def visit_Name(self, node: ast.Name) -> None:
        self._tuning_use(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not self._tuning_use(node):
            self.generic_visit(node)

    def _tuning_use(self, node: ast.Name | ast.Attribute) -> bool:
        name = self.dotted(node) or ""
        module, _, function = name.rpartition(".")
        if module == TUNING_MODULE:
            self.tuning.add((self.where(), function))
            return True
        return False


def scan(path: Path) -> _Scan:
    tree = ast.parse(path.read_text(), str(path))
    found = _Scan(tree)
    found.visit(tree)
    return found


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_scan_finds_each_kind_of_process_wide_call() -> None:
    """The tuning module itself makes every kind of call the scan looks for, so a scan that missed one fails here."""
    found = {what for _, _, what in scan(PACKAGE / TUNING_FILE).forbidden}
    assert {"gc.freeze", "gc.disable", "gc.enable", "pyarrow.set_memory_pool", "ctypes.CDLL", "import ctypes",
            "sniffio.thread_local.name"} <= found
    assert any("set_forkserver_preload" in w for w in found)
    assert any("mallopt" in w for w in found)
    assert "os.environ.setdefault('ARROW_DEFAULT_MEMORY_POOL')" in found


def test_only_the_tuning_module_changes_process_wide_state() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} ({scope}): {what}"
        for path in package_files() if path.relative_to(PACKAGE).as_posix() != TUNING_FILE
        for scope, line, what in scan(path).forbidden
    ]
    assert not offenders, "process-wide settings belong in waha_pipeline/process_tuning.py:\n" + "\n".join(offenders)


def test_tuning_is_applied_at_the_entries_and_nowhere_else() -> None:
    used = {
        (path.relative_to(PACKAGE).as_posix(), scope, function)
        for path in package_files() if path.relative_to(PACKAGE).as_posix() != TUNING_FILE
        for scope, function in scan(path).tuning
    }
    expected = {(file, scope, function) for (file, scope), functions in ENTRIES.items() for function in functions}
    assert used == expected, f"not at an entry: {sorted(used - expected)}; entry not tuned: {sorted(expected - used)}"


# ------------------------------------------------------------------------------------------ real processes

def run_python(code: str, tmp_path: Path) -> dict:
    """`code` in a new interpreter (python -c: a fork server started by it has no main module to re-import), with
    the allocator variables unset; it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if not TUNING_ENV.match(k)}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'crm.db'}", DAGSTER_HOME=str(tmp_path / "dagster"),
               IMPORT_WORKERS="1")
    env.pop("WAHA_BASE_URL", None)
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


FORK_SERVER_PROBE = """
from waha_pipeline.importer.worker_server import CONTEXT
with CONTEXT.Pool(1) as pool:  # a child of the chunk workers' fork server, as every worker is
    out["fork_server_child_frozen"] = pool.apply(gc.get_freeze_count)
"""


def test_the_cli_process_is_tuned(tmp_path: Path) -> None:
    out = run_python("""
import gc, json, os
from waha_pipeline.cli.main import main
out = {"frozen_before": gc.get_freeze_count()}
out["code"] = main(["status", "no-such-channel"])
import pyarrow as pa
out.update(frozen=gc.get_freeze_count(), pool=pa.default_memory_pool().backend_name,
           env=os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))
""" + FORK_SERVER_PROBE + "print(json.dumps(out))", tmp_path)
    assert out["code"] == 2  # an unknown channel: the command ran through the Dagster instance and the CRM
    assert out["frozen_before"] == 0
    assert out["frozen"] > 0  # the Dagster commands' imports
    assert out["pool"] == "system"
    assert out["env"] == "system"  # what a fork server started from here reads
    assert out["fork_server_child_frozen"] > 0  # the preload ran, fork_server_entry last


def test_a_dagster_run_process_is_tuned_and_a_sensor_evaluation_is_not(tmp_path: Path) -> None:
    out = run_python("""
import gc, json, os
import dagster as dg
import pyarrow as pa
from waha_pipeline.defs.resources import CrmResource

crm = CrmResource(database_url=os.environ["DATABASE_URL"], stage_dir="stages")
out = {"initial": pa.default_memory_pool().backend_name}
with dg.build_resources({"crm": crm}):  # set up outside a run, as for a sensor's evaluation
    out["outside_run"] = pa.default_memory_pool().backend_name

@dg.asset
def probe(crm: CrmResource) -> None:
    out["in_run"] = pa.default_memory_pool().backend_name

out["success"] = dg.materialize([probe], resources={"crm": crm}).success
""" + FORK_SERVER_PROBE + "print(json.dumps(out))", tmp_path)
    assert out["success"]
    assert out["initial"] != "system", "Arrow's default pool is already the system one: this test proves nothing"
    assert out["outside_run"] == out["initial"]
    assert out["in_run"] == "system"
    assert out["fork_server_child_frozen"] > 0


def test_a_chunk_worker_process_is_tuned_at_its_entry(tmp_path: Path) -> None:
    """The worker entry runs in a process of its own with no chunk to do (the parent's side of its pipes is played
    here): it must end normally, on Arrow's system pool."""
    out = run_python("""
import json, multiprocessing as mp, os
import pyarrow as pa
from waha_pipeline.importer.stage_actions import STAGES
from waha_pipeline.importer.workers import RunnerSpec, _work

spec = RunnerSpec(database_url=os.environ["DATABASE_URL"], crm_commit_timeouts=(5.0, 5.0), stage_root="stages",
                  waha_base_url="http://127.0.0.1:9", waha_api_key=None, waha_concurrency=1,
                  waha_max_response_bytes=1 << 20, page_size=10, fetch_deadline_seconds=5.0, prefetch=0,
                  max_chunk_bytes=1 << 20)
out = {"initial": pa.default_memory_pool().backend_name}
events_r, events_w = mp.Pipe(duplex=False)
orders_r, orders_w = mp.Pipe(duplex=False)
lifeline_r, lifeline_w = mp.Pipe(duplex=False)
orders_w.send(None)  # no chunk for this worker
_work(spec=spec, selected=set(STAGES), skip_committed=False, events=events_w, orders=orders_r, lifeline=lifeline_r)
messages = []
while events_r.poll():
    messages.append(type(events_r.recv()).__name__)
out.update(messages=messages, pool=pa.default_memory_pool().backend_name)
print(json.dumps(out))
""", tmp_path)
    assert out["messages"][-1] == "_Done", out["messages"]
    assert out["initial"] != "system"
    assert out["pool"] == "system"
