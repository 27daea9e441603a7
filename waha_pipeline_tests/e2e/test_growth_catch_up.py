"""End to end against a channel that gains history while it is kept in step: an incremental import picks up
new messages and new chats exactly; history WAHA syncs late (older than the chat list's time) is invisible to it,
and a deep pass (`--all-chats`) must bring it in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waha_pipeline.simulator.models import DatasetSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected

SPEC = DatasetSpec(seed=31, chats=80, target_messages=400)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def imported(capsys: pytest.CaptureFixture[str], *args: str) -> None:
    code, out, err = cli(capsys, "import", "demo", "--days", "0", *args)
    assert code == 0, out + err


def test_incremental_import_follows_growth_and_misses_exactly_the_history_synced_late(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    imported(capsys)
    assert_matches(snapshot(url), expected(sim, url))
    first = latest_plan(url)

    # new messages (now, after every chat's newest) and new chats: the next incremental import has them all
    grown = sim.grow("demo", new_messages=12, new_chats=3, seed=1)
    assert grown["at"] >= first["plan_time"] and grown["rejects"] == 0
    sim.reset_stats()
    imported(capsys)
    assert_matches(snapshot(url), expected(sim, url))
    fetched = set(sim.stats()["messages_by_chat"])
    assert set(grown["chats"]["new_messages"]) | set(grown["chats"]["new_chats"]) <= fetched
    planned = sum(len(c["chat_ids"]) for c in first["chunks"])
    assert len(fetched) < planned // 2  # incremental: not the whole channel again

    # late history inside existing chats' spans: the chat list does not move, the incremental import misses
    # exactly those messages
    late = sim.grow("demo", late_messages=6, seed=2)
    late_ids = set(late["external_ids"]["late_messages"])
    assert len(late_ids) == 6 and late["rejects"] == 0
    sim.reset_stats()
    imported(capsys)
    state, want = snapshot(url), expected(sim, url)
    assert not set(late["chats"]["late_messages"]) & set(sim.stats()["messages_by_chat"])
    assert state["messages"] <= want["messages"]
    assert {m[0] for m in want["messages"] - state["messages"]} == late_ids


def test_a_deep_pass_brings_history_synced_late_inside_covered_spans(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    imported(capsys)
    late = sim.grow("demo", late_messages=6, seed=2)
    assert late["late_messages"] == 6 and late["rejects"] == 0
    imported(capsys, "--all-chats")
    assert_matches(snapshot(url), expected(sim, url))
