"""Run the simulator: in a background thread for tests and `demo`, or in the foreground for `simulate`.

Why a pre-bound socket: binding 127.0.0.1:0 ourselves gives the real port before uvicorn starts, so callers
get a usable base_url without polling logs, and parallel test runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from waha_pipeline.process_tuning import long_lived
from waha_pipeline.simulator.app import create_app
from waha_pipeline.simulator.faults import Faults
from waha_pipeline.simulator.generator import build_dataset
from waha_pipeline.simulator.middleware import TRANSPORT_KEY
from waha_pipeline.simulator.models import DatasetSpec
from waha_pipeline.simulator.state import SimulatorState
from waha_pipeline.simulator.truth import ground_truth

BACKLOG = 2048


def build_state(spec: DatasetSpec, *, api_key: str | None = None, anchor: int | None = None,
                faults: Faults | None = None) -> SimulatorState:
    """Dataset + live state for `spec`; anchor None -> spec.anchor, else now (floored to the second)."""
    state = SimulatorState(dataset=build_dataset(spec, anchor), api_key=api_key)
    if faults is not None:
        state.set_faults(faults)
    return state


class _SimHttpProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, exposing the connection's transport to the app as scope["state"][TRANSPORT_KEY]
    (ASGI gives an app no way to reset a connection; the 'reset' fault needs one)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.app_state = {**self.app_state, TRANSPORT_KEY: transport}
        super().connection_made(transport)


class Listener:
    """Takes the simulator off the network and back: `go_down` closes the listening socket (new connections
    are refused) and aborts every open connection (in-flight requests get no answer); `go_up` binds the same
    port again. Runs on the server's loop; `down`/`up` are the thread-safe doors."""

    def __init__(self, server: uvicorn.Server, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.is_down = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.servers[0].get_loop()

    async def go_down(self, for_s: float | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.is_down:
            self.is_down = True
            for srv in self.server.servers:
                srv.close()
            for connection in list(self.server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
        if for_s is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(for_s, lambda: loop.create_task(self.go_up()))

    async def go_up(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.is_down or self.server.should_exit:
            return
        sock = _bind(self.host, self.port)
        config = self.server.config
        factory = functools.partial(config.http_protocol_class, config=config,
                                    server_state=self.server.server_state, app_state=self.server.lifespan.state)
        srv = await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=BACKLOG)
        self.server.servers.append(srv)
        self.is_down = False

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def down(self, for_s: float | None = None) -> None:
        self._call(self.go_down(for_s))

    def up(self) -> None:
        self._call(self.go_up())


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

    # ---- faults (also GET/POST /_sim/faults)
    @property
    def faults(self) -> Faults:
        return self.state.faults

    def set_faults(self, faults: Faults | None = None, **patch: Any) -> Faults:
        """Install `faults` (default: the active set) with `patch` applied, e.g. set_faults(error_rate=0.1);
        set_faults(Faults()) clears everything. Restarts the draw counters. Returns the active set."""
        return self.state.set_faults((faults or self.state.faults).replace(**patch))

    def clear_faults(self) -> Faults:
        return self.state.set_faults(Faults())

    # ---- session lifecycle (also POST /_sim/sessions/{name}/status|delete|restore)
    def schedule_status(self, session: str, status: str, after_requests: int = 0,
                        for_requests: int | None = None) -> None:
        """`status` from the (after_requests+1)th request to `session` on; WORKING again after for_requests."""
        self.state.schedule_status(session, status, after_requests, for_requests)

    def delete_session(self, session: str, after_requests: int | None = None,
                       when: Callable[[], bool] | None = None) -> None:
        self.state.delete_session(session, after_requests, when)

    def restore_session(self, session: str, status: str | None = None) -> None:
        self.state.restore_session(session, status)

    # ---- injected data (also POST /_sim/sessions/{name}/chats and /_sim/sessions/{name}/messages)
    def add_chat(self, session: str, raw_id: str | dict, name: str | None = None) -> Any:
        """A chat with any id string (e.g. "12345@weird.server"); the truth skips it as non-importable."""
        return self.state.add_chat(session, raw_id, name)

    def add_message(self, session: str, chat_id: str, raw: dict, *, content_type: str = "text",
                    defect: str | None = None, **facts: Any) -> Any:
        """Serve a raw WAHA message in `chat_id`; see SimulatorState.add_message for the truth facts."""
        return self.state.add_message(session, chat_id, raw, content_type=content_type, defect=defect, **facts)

    # ---- growth (also POST /_sim/sessions/{name}/grow)
    def grow(self, session: str, *, new_messages: int = 0, new_chats: int = 0, late_messages: int = 0,
             at: int | None = None, seed: int = 0, into_chats: int | None = None, since: int | None = None) -> dict:
        """More history generated like the rest, included in the truth; see SimulatorState.grow. Applied on the
        server's loop, so requests in flight see each chat before or after, never half-grown."""

        async def apply() -> dict:
            return self.state.grow(session, new_messages=new_messages, new_chats=new_chats,
                                   late_messages=late_messages, at=at, seed=seed, into_chats=into_chats, since=since)

        return asyncio.run_coroutine_threadsafe(apply(), self.state.listener.loop).result(timeout=60)

    # ---- the listener (also POST /_sim/down with {"for_s": S})
    def down(self, for_s: float | None = None) -> None:
        """Refuse connections (closed listening socket) and drop open ones; back up after for_s, or at up()."""
        self.state.listener.down(for_s)

    def up(self) -> None:
        self.state.listener.up()

    @property
    def is_down(self) -> bool:
        return bool(self.state.listener.is_down)

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
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _server(state: SimulatorState, log_level: str, host: str, port: int) -> uvicorn.Server:
    # timeout_graceful_shutdown: a request still in an injected hang must not hold the shutdown for hang_s
    config = uvicorn.Config(create_app(state), log_level=log_level, access_log=False, lifespan="off",
                            timeout_keep_alive=30, backlog=BACKLOG, http=_SimHttpProtocol,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    state.listener = Listener(server, host, port)
    return server


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
    faults: Faults | None = None,
) -> Iterator[SimulatorHandle]:
    """Serve a simulator on loopback in a daemon thread; port 0 picks a free port. Stops cleanly on exit."""
    if state is None:
        with long_lived():  # an entry: the dataset is served as long as the process lives (process_tuning.py)
            state = build_state(spec or DatasetSpec(), api_key=api_key, anchor=anchor)
    if faults is not None:
        state.set_faults(faults)
    sock = _bind(host, port)
    real_port = sock.getsockname()[1]
    server = _server(state, "warning", host, real_port)
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
        server.should_exit = True  # a pending automatic go_up sees it and stays down
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
    faults: Faults | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (the `waha-pipeline simulate` command)."""
    if state is None:
        with long_lived():  # an entry: the dataset is served until exit (process_tuning.py)
            state = build_state(spec or DatasetSpec(), api_key=api_key, anchor=anchor)
    if faults is not None:
        state.set_faults(faults)
    sock = _bind(host, port)
    real_port = sock.getsockname()[1]
    for name, sess in state.dataset.sessions.items():
        c = sess.counts()
        announce(f"session {name!r} ({state.statuses[name]}): {c['chats']} chats, {c['served_messages']} messages, "
                 f"{c['lid_mappings']} lid mappings")
    announce(f"WAHA simulator ({state.engine}) listening on http://{host}:{real_port} (anchor {state.dataset.anchor}"
             f"{', X-Api-Key required' if state.api_key else ''}); Ctrl+C to stop")
    active = {k: v for k, v in state.faults.to_dict().items() if v != getattr(Faults(), k)}
    if active:
        announce(f"faults: {active} (change them with POST /_sim/faults)")
    server = _server(state, log_level, host, real_port)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
