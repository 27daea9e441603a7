"""Fixtures for the simulator suite: one small served dataset per session, one default-sized dataset."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from waha_pipeline.simulator import Dataset, DatasetSpec, SessionSpec, SimulatorHandle, build_dataset, run_in_thread

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
