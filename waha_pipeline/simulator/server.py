"""Run the simulator: in a background thread for tests and `demo`, or in the foreground for `simulate`.

Why a pre-bound socket: binding 127.0.0.1:0 ourselves gives the real port before uvicorn starts, so callers
get a usable base_url without polling logs, and parallel test runs never collide.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn

from waha_pipeline.simulator.app import create_app
from waha_pipeline.simulator.dataset import DatasetSpec, build_dataset
from waha_pipeline.simulator.state import SimulatorState
from waha_pipeline.simulator.truth import ground_truth


def build_state(spec: DatasetSpec, *, api_key: str | None = None, anchor: int | None = None) -> SimulatorState:
    """Dataset + live state for `spec`; anchor None -> spec.anchor, else now (floored to the second)."""
    return SimulatorState(dataset=build_dataset(spec, anchor), api_key=api_key)


@dataclass
class SimulatorHandle:
    """A running simulator. Control it through `state` directly (same process) or the /_sim routes."""

    base_url: str
    port: int
    state: SimulatorState
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def anchor(self) -> int:
        return self.state.dataset.anchor

    def stats(self) -> dict:
        return self.state.stats.snapshot()

    def reset_stats(self) -> None:
        self.state.stats.reset()

    def set_status(self, session: str, status: str) -> None:
        self.state.set_status(session, status)

    def truth(self, session: str | None = None, **kw: object) -> dict:
        """ground_truth() for `session` (default: the first); kw as in truth.ground_truth."""
        name = session or next(iter(self.state.dataset.sessions))
        kw.setdefault("window_start", None)
        kw.setdefault("window_end", self.anchor)
        return ground_truth(self.state.dataset, name, **kw)  # type: ignore[arg-type]


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(state: SimulatorState, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(create_app(state), log_level=log_level, access_log=False, lifespan="off",
                          timeout_keep_alive=30, backlog=2048)


@contextlib.contextmanager
def run_in_thread(
    spec: DatasetSpec | None = None,
    *,
    port: int = 0,
    api_key: str | None = None,
    anchor: int | None = None,
    state: SimulatorState | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> Iterator[SimulatorHandle]:
    """Serve a simulator on loopback in a daemon thread; port 0 picks a free port. Stops cleanly on exit."""
    if state is None:
        state = build_state(spec or DatasetSpec(), api_key=api_key, anchor=anchor)
    sock = _bind(host, port)
    real_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(state, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"waha-sim:{real_port}",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"WAHA simulator did not start on {host}:{real_port}")
        time.sleep(0.01)
    handle = SimulatorHandle(base_url=f"http://{host}:{real_port}", port=real_port, state=state, server=server,
                             thread=thread)
    try:
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve_forever(
    spec: DatasetSpec | None = None,
    port: int = 3000,
    api_key: str | None = None,
    *,
    anchor: int | None = None,
    host: str = "127.0.0.1",
    state: SimulatorState | None = None,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (the `waha-pipeline simulate` command)."""
    if state is None:
        state = build_state(spec or DatasetSpec(), api_key=api_key, anchor=anchor)
    sock = _bind(host, port)
    real_port = sock.getsockname()[1]
    for name, sess in state.dataset.sessions.items():
        c = sess.counts()
        announce(f"session {name!r} ({state.statuses[name]}): {c['chats']} chats, {c['served_messages']} messages, "
                 f"{c['lid_mappings']} lid mappings")
    announce(f"WAHA simulator listening on http://{host}:{real_port} (anchor {state.dataset.anchor}"
             f"{', X-Api-Key required' if state.api_key else ''}); Ctrl+C to stop")
    server = uvicorn.Server(_config(state, log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
