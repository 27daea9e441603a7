"""`waha-pipeline`: import, status, rerun-failed, simulate, demo.

Exit codes (SPEC §4): 0 every chunk committed; 1 the import ran and a chunk failed or was interrupted (or
WAHA/the CRM failed at run time; `rerun-failed CHANNEL` finishes it); 2 bad input or configuration, a CRM that
cannot be reached or migrated at the start, or the channel being imported by another process, reported in one
line before anything is written. Errors are one line; `--verbose` adds stack traces and Dagster's own log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import textwrap
import time
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from waha_pipeline.errors import ConfigError, PipelineError, WahaSessionNotFound
from waha_pipeline.process_tuning import long_lived, tune_import_process
from waha_pipeline.settings import DEFAULT_DAGSTER_HOME, DEFAULT_DATABASE_URL, DEFAULT_STAGE_SUBDIR, Settings
from waha_pipeline.simulator.faults import add_fault_arguments, faults_from_args

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


# The environment variables the commands read, with what they mean; their defaults come from settings.py.
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("WAHA_BASE_URL", "WAHA server, http(s)://host:port"),
    ("WAHA_API_KEY", "sent as X-Api-Key; never logged or stored"),
    ("DATABASE_URL", "CRM database, postgresql:// or sqlite:///"),
    ("DAGSTER_HOME", "Dagster instance directory"),
    ("WAHA_TENANT_ID", "tenant of sessions without config.metadata.tenant_id"),
    ("WAHA_CONCURRENCY", "concurrent requests to one WAHA server"),
    ("WAHA_PAGE_SIZE", "messages per page request"),
    ("IMPORT_WORKERS", "chunk worker processes (PostgreSQL CRM only)"),
    ("IMPORT_CHUNK_MAX_MB", "fetched messages one chunk may hold, MB of JSON"),
    ("IMPORT_STAGE_URL", "chunk stage files: a directory or a URL (s3://bucket/prefix)"),
    ("WAHA_MAX_RESPONSE_MB", "largest WAHA response body, MB"),
    ("WAHA_PLAN_DEADLINE_SECONDS", "listing a channel's chats and lids"),
    ("CRM_LOCK_TIMEOUT_SECONDS", "a chunk commit's wait for one lock (PostgreSQL)"),
    ("CRM_STATEMENT_TIMEOUT_SECONDS", "one statement of a chunk commit (PostgreSQL)"),
)
_SETTINGS_FIELD = {
    "WAHA_TENANT_ID": "tenant_id",
    "WAHA_CONCURRENCY": "waha_concurrency",
    "WAHA_PAGE_SIZE": "waha_page_size",
    "IMPORT_WORKERS": "import_workers",
    "IMPORT_CHUNK_MAX_MB": "chunk_max_mb",
    "WAHA_MAX_RESPONSE_MB": "waha_max_response_mb",
    "WAHA_PLAN_DEADLINE_SECONDS": "waha_plan_deadline_seconds",
    "CRM_LOCK_TIMEOUT_SECONDS": "crm_lock_timeout_seconds",
    "CRM_STATEMENT_TIMEOUT_SECONDS": "crm_statement_timeout_seconds",
}


def env_defaults() -> dict[str, str]:
    """Each variable's default as `--help` shows it, taken from Settings (settings.py), never restated here."""
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    shown = {
        "WAHA_BASE_URL": "none; `demo` starts its own simulator",
        "WAHA_API_KEY": "no header",
        "DATABASE_URL": DEFAULT_DATABASE_URL,
        "DAGSTER_HOME": DEFAULT_DAGSTER_HOME,
        "IMPORT_STAGE_URL": f"$DAGSTER_HOME/{DEFAULT_STAGE_SUBDIR}",
    }
    for name, attr in _SETTINGS_FIELD.items():
        value = fields[attr]
        shown[name] = f"{value:g}" if isinstance(value, float) else str(value)
    return shown


EXIT_CODES = (
    (EXIT_OK, "every chunk committed"),
    (EXIT_FAILED, "a chunk failed or the import was stopped (the keys and the re-run command are printed)"),
    (EXIT_BAD_INPUT, "bad input or configuration, an unreachable CRM, an ambiguous channel name or a channel "
                     "another process imports (one line; nothing written)"),
)
STATUS_EXIT_CODES = (
    (EXIT_OK, "the status was read (whatever the chunks' states)"),
    (EXIT_BAD_INPUT, "bad input or configuration, an unknown or ambiguous channel, an unreachable CRM"),
)
_ALL = tuple(name for name, _ in ENVIRONMENT)
_NO_WAHA = tuple(n for n in _ALL if n not in ("WAHA_BASE_URL", "WAHA_API_KEY"))


def help_epilog(names: Sequence[str], exit_codes: Sequence[tuple[int, str]]) -> str:
    """The `--help` tail: the environment a command reads with each default, and its exit codes."""
    defaults = env_defaults()
    meanings = dict(ENVIRONMENT)
    width = max(len(n) for n in names)
    lines = ["environment (default in brackets):"]
    lines += [f"  {n.ljust(width)}  {meanings[n]} [{defaults[n]}]" for n in names]
    lines += ["", "exit codes:"]
    lines += [textwrap.fill(text, 110, initial_indent=f"  {code}  ", subsequent_indent="     ") for code, text in exit_codes]
    return "\n".join(lines)


def package_version() -> str:
    try:
        return version("waha-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (flags and options whose help states it excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(EXIT_BAD_INPUT, f"waha-pipeline: error: {message}\n")


def _int_in(name: str, low: int, high: int | None = None) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {value}")
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="waha-pipeline", description="Import WhatsApp history from WAHA into the CRM via Dagster.",
                     epilog=help_epilog(_ALL, EXIT_CODES))
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    channel_help = "WAHA session name or channel slug"

    p = sub.add_parser("import", help="plan a channel and import every chunk", epilog=help_epilog(_ALL, EXIT_CODES))
    p.add_argument("channel", help=channel_help)
    p.add_argument("--days", type=_int_in("--days", 0), default=180, help="window in days, 0 = whole history")
    p.add_argument("--session-timeout-minutes", type=_int_in("--session-timeout-minutes", 1), default=None,
                   help="gap that starts a new session (default: the channel's own setting, else 30)")
    p.add_argument("--chunk-size", type=_int_in("--chunk-size", 1, 500), default=50, help="chats per chunk, 1..500")
    p.add_argument("--include-groups", action="store_true", help="import group chats too (default: off)")
    p.add_argument("--all-chats", action="store_true",
                   help="plan every chat, also those WAHA's chat list shows with nothing new since the last import "
                        "(default: off)")
    _add_json(p)
    _add_verbose(p)

    p = sub.add_parser("status", help="per-chunk state of the latest plan",
                       epilog=help_epilog(("DATABASE_URL",), STATUS_EXIT_CODES))
    p.add_argument("channel", help=channel_help)
    _add_json(p)
    _add_verbose(p)

    p = sub.add_parser("rerun-failed", help="re-run the failed chunks and the pending ones no import works on",
                       epilog=help_epilog(_ALL, EXIT_CODES))
    p.add_argument("channel", help=channel_help)
    _add_verbose(p)

    p = sub.add_parser("simulate", help="serve the WAHA simulator in the foreground",
                       epilog=help_epilog(("WAHA_API_KEY",), ((EXIT_BAD_INPUT, "bad option (one line)"),)))
    p.add_argument("--port", type=_int_in("--port", 0, 65535), default=3000, help="TCP port to serve on")
    p.add_argument("--seed", type=int, default=7, help="dataset seed")
    p.add_argument("--chats", type=_int_in("--chats", 1), default=1176, help="chats per session")
    p.add_argument("--messages", type=_int_in("--messages", 1), default=5700, help="messages per session, about")
    p.add_argument("--session", action="append", default=None,
                   help="WAHA session name, repeatable (default: demo)")
    p.add_argument("--engine", choices=("gows", "noweb", "webjs"), default="gows",
                   help="engine profile whose message objects, paging and chat list are served")
    p.add_argument("--api-key", default=None, help="require this X-Api-Key (default: WAHA_API_KEY if set)")
    add_fault_arguments(p)

    sub.add_parser("demo", help="simulate a seed-sized channel and import it into the embedded defaults",
                   epilog=help_epilog(_NO_WAHA, EXIT_CODES))
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (channel, plan, chunks, totals, exit code) and nothing else "
                             "on stdout; errors stay one line on stderr (default: off)")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="stack traces and Dagster's event log on the console (default: off)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a bad argument; return the code so main() is callable in-process
        return int(exc.code or 0)
    try:
        settings = Settings.from_env()
        if args.command == "simulate":
            return _simulate(args, settings)
        tune_import_process()  # before the first frame is allocated and before the fork server starts
        if args.command == "demo":
            return _demo()
        if args.command != "status" and settings.chunk_workers > 1:
            _start_worker_server(verbose=args.verbose)
        commands = _import_commands()

        handler = {"import": commands.import_channel, "status": commands.status, "rerun-failed": commands.rerun_failed}
        as_json = bool(getattr(args, "json", False))
        out = commands.Output(json=as_json, stdout=sys.stdout)
        # With --json, whatever else would reach stdout (a library's print) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            return handler[args.command](settings, args, out)
    except ConfigError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc), args)
    except WahaSessionNotFound as exc:
        return _fail(EXIT_BAD_INPUT, f"unknown channel {args.channel!r}: {exc}", args)
    except PipelineError as exc:
        return _fail(EXIT_FAILED, str(exc), args)
    except KeyboardInterrupt:
        channel = getattr(args, "channel", None)
        advice = f"; finish with `waha-pipeline rerun-failed {channel}`" if channel and args.command != "status" else ""
        return _fail(EXIT_FAILED, f"interrupted{advice}", args)
    except Exception as exc:  # noqa: BLE001 - e.g. the CRM failing at run time: one line, the trace with --verbose
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            from waha_pipeline.crm.ledger import primary_message

            orig = exc.orig if exc.orig is not None else exc
            return _fail(EXIT_FAILED, f"the CRM database failed: {primary_message(str(orig))}", args)
        return _fail(EXIT_FAILED, f"{type(exc).__name__}: {exc} (--verbose shows where)", args)


def _start_worker_server(*, verbose: bool) -> None:
    """Chunk worker processes inherit the fork server's stderr. Without --verbose it is /dev/null: a worker's
    chunk failures reach this process as events and are printed once, in the report; its own log lines would
    print each of them a second time."""
    from waha_pipeline.importer.worker_server import warm_up

    if verbose:
        warm_up()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        warm_up()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_commands() -> ModuleType:
    """Dagster is imported only by commands that need it; what the imports build lives until exit."""
    with long_lived():
        from waha_pipeline.cli import commands
    return commands


def _fail(code: int, message: str, args: argparse.Namespace | None = None) -> int:
    if getattr(args, "verbose", False):
        traceback.print_exc()
    print(f"waha-pipeline: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from waha_pipeline.simulator.models import DatasetSpec, SessionSpec
    from waha_pipeline.simulator.server import serve_forever

    sessions = tuple(SessionSpec(name=name) for name in args.session or ["demo"])
    spec = DatasetSpec(seed=args.seed, chats=args.chats, target_messages=args.messages, sessions=sessions,
                       engine=args.engine)
    try:
        faults = faults_from_args(args)
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from None
    serve_forever(spec, port=args.port, api_key=args.api_key or settings.waha_api_key, faults=faults)
    return EXIT_OK


def _demo() -> int:
    from waha_pipeline.cli import commands
    from waha_pipeline.crm.store import CrmStore
    from waha_pipeline.simulator import DatasetSpec, run_in_thread

    for name in ("WAHA_BASE_URL", "WAHA_API_KEY"):
        os.environ.pop(name, None)
    started = time.monotonic()
    with run_in_thread(DatasetSpec()) as sim:
        os.environ["WAHA_BASE_URL"] = sim.base_url
        settings = Settings.from_env()
        print(f"WAHA simulator on {sim.base_url} (seed-sized dataset); importing channel 'demo' ...")
        code = commands.import_channel(settings, argparse.Namespace(
            channel="demo", days=0, session_timeout_minutes=None, chunk_size=50, include_groups=False, all_chats=False,
        ))
        requests = {k: v for k, v in sim.stats().items() if k in ("total", "sessions", "chats", "messages", "lids")}
    wall = time.monotonic() - started
    store = CrmStore.from_url(settings.database_url)
    try:
        channel = store.find_channel("demo")
        counts = store.counts(channel.id) if channel else {}
    finally:
        store.dispose()
    print(f"demo: {wall:.1f} s wall; WAHA requests {requests.pop('total', 0)} "
          f"({', '.join(f'{k} {v}' for k, v in requests.items())}); in the CRM: "
          f"{', '.join(f'{v} {k}' for k, v in counts.items())}")
    print(f"Browse the runs and every chunk's status:  {ui_command(settings.dagster_home)}")
    return code


def ui_command(dagster_home: Path, *, executable: str | None = None, cwd: Path | None = None) -> str:
    """The shell command opening the Dagster UI on `dagster_home`, runnable as printed from `cwd`: the `dagster`
    script installed next to this interpreter (a venv's bin need not be on PATH), else `python -m dagster`; the
    project's workspace.yaml when `cwd` has it, else the code location's module."""
    cwd = cwd or Path.cwd()
    python = Path(executable or sys.executable)  # not resolved: a venv's python is a symlink out of the venv
    script = python.parent / "dagster"
    command = [_shown_path(script, cwd)] if script.is_file() else [_shown_path(python, cwd), "-m", "dagster"]
    command.append("dev")
    if (cwd / "workspace.yaml").is_file():
        command += ["-w", "workspace.yaml"]
    else:
        command += ["-m", "waha_pipeline.definitions"]
    return f"DAGSTER_HOME={shlex.quote(str(dagster_home))} {shlex.join(command)}"


def _shown_path(path: Path, cwd: Path) -> str:
    """Relative to cwd when below it (`.venv/bin/dagster`), else absolute; either way a path, not a PATH lookup."""
    absolute = path if path.is_absolute() else cwd / path
    try:
        return str(absolute.relative_to(cwd))
    except ValueError:
        return str(absolute)


if __name__ == "__main__":
    raise SystemExit(main())
