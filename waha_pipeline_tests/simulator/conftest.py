"""Fixtures for the simulator suite: one small served dataset per session, one default-sized dataset."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from waha_pipeline.simulator import Dataset, DatasetSpec, SessionSpec, SimulatorHandle, build_dataset, run_in_thread
from waha_pipeline.simulator import middleware as sim_middleware

ANCHOR = 1_760_000_000  # fixed "now" of every simulator test dataset
API_KEY = "sim-test-key"
SMALL_SPEC = DatasetSpec(
    seed=11,
    chats=120,
    target_messages=900,
    sessions=(SessionSpec("demo"), SessionSpec("acme", tenant_id="t-acme", chats=40, target_messages=200),
              SessionSpec("pairing", status="SCAN_QR_CODE", chats=20, target_messages=60),
              SessionSpec("old", status="STOPPED", chats=20, target_messages=60)),
)


@pytest.fixture(scope="session")
def default_dataset() -> Dataset:
    return build_dataset(DatasetSpec(), anchor=ANCHOR)


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorHandle]:
    with run_in_thread(SMALL_SPEC, anchor=ANCHOR, api_key=API_KEY) as handle:
        yield handle


@pytest.fixture()
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers={"X-Api-Key": API_KEY}, timeout=10) as c:
        yield c


class ServerWaits:
    """Stands in for the `asyncio` module of simulator/middleware.py and records every timed wait the server starts
    (latency and jitter sleeps, hang timeouts) before waiting for real. The server's delays are then asserted
    from what it was told to wait, not from a stopwatch that a loaded machine would stretch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sleeps: list[float] = []  # asyncio.sleep(s) with s > 0 (sleep(0) is a yield, not a delay)
        self.hangs: list[float] = []  # the timeout of asyncio.wait (a hang that the client may cut short)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    async def wait(self, aws: Any, *, timeout: float | None = None, **kw: Any) -> Any:
        with self._lock:
            self.hangs.append(timeout)  # type: ignore[arg-type]
        return await asyncio.wait(aws, timeout=timeout, **kw)


@pytest.fixture()
def server_waits(monkeypatch: pytest.MonkeyPatch) -> ServerWaits:
    waits = ServerWaits()
    monkeypatch.setattr(sim_middleware, "asyncio", waits)
    return waits
