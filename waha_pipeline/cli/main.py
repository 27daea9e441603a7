"""`waha-pipeline`: import, status, rerun-failed, simulate, demo.

Exit codes (SPEC §4): 0 every chunk committed; 1 the import ran and a chunk failed (or WAHA/the CRM failed at
run time); 2 bad input or configuration, reported in one line before anything is written.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from waha_pipeline.errors import ConfigError, PipelineError, WahaSessionNotFound
from waha_pipeline.settings import Settings
from waha_pipeline.simulator.faults import add_fault_arguments, faults_from_args

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
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
    parser = _Parser(prog="waha-pipeline", description="Import WhatsApp history from WAHA into the CRM via Dagster.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("import", help="plan a channel and import every chunk")
    p.add_argument("channel", help="WAHA session name")
    p.add_argument("--days", type=_int_in("--days", 0), default=180, help="window in days, 0 = whole history")
    p.add_argument("--session-timeout-minutes", type=_int_in("--session-timeout-minutes", 1), default=None)
    p.add_argument("--chunk-size", type=_int_in("--chunk-size", 1, 500), default=50)
    p.add_argument("--include-groups", action="store_true")
    p.add_argument("--all-chats", action="store_true",
                   help="plan every chat, also those WAHA's chat list shows with nothing new since the last import")

    for name, text in (("status", "per-chunk state of the latest plan"), ("rerun-failed", "re-run failed chunks")):
        sub.add_parser(name, help=text).add_argument("channel", help="WAHA session name")

    p = sub.add_parser("simulate", help="serve the WAHA simulator in the foreground")
    p.add_argument("--port", type=_int_in("--port", 0, 65535), default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--chats", type=_int_in("--chats", 1), default=1176)
    p.add_argument("--messages", type=_int_in("--messages", 1), default=5700)
    p.add_argument("--session", action="append", default=None, help="WAHA session name (repeatable)")
    p.add_argument("--engine", choices=("gows", "noweb", "webjs"), default="gows",
                   help="engine profile whose message objects, paging and chat list are served")
    p.add_argument("--api-key", default=None, help="require this X-Api-Key (default: WAHA_API_KEY if set)")
    add_fault_arguments(p)

    sub.add_parser("demo", help="simulate a seed-sized channel and import it into the embedded defaults")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a bad argument; return the code so main() is callable in-process
        return int(exc.code or 0)
    try:
        settings = Settings.from_env()
        if args.command == "simulate":
            return _simulate(args, settings)
        if args.command == "demo":
            return _demo()
        from waha_pipeline.importer.memory import use_lean_allocators

        use_lean_allocators()  # before the first frame is allocated (and before the fork server starts)
        if args.command != "status" and settings.chunk_workers > 1:
            from waha_pipeline.importer.worker_server import warm_up

            warm_up()
        commands = _import_commands()

        handler = {"import": commands.import_channel, "status": commands.status, "rerun-failed": commands.rerun_failed}
        return handler[args.command](settings, args)
    except ConfigError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    except WahaSessionNotFound as exc:
        return _fail(EXIT_BAD_INPUT, f"unknown channel {args.channel!r}: {exc}")
    except PipelineError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        return _fail(EXIT_FAILED, "interrupted")


def _import_commands() -> ModuleType:
    """Dagster is imported only by commands that need it. What the imports build lives until exit: collecting
    while they run is wasted (~0.4 s), and frozen, it is skipped by every later full collection and by the one
    at interpreter exit (~2 s of a seed import)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from waha_pipeline.cli import commands
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return commands


def _fail(code: int, message: str) -> int:
    print(f"waha-pipeline: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from waha_pipeline.simulator.dataset import DatasetSpec, SessionSpec
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
    print(f"Browse the runs and every chunk's status:  DAGSTER_HOME={settings.dagster_home} dagster dev -w workspace.yaml")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
