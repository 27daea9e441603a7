"""End to end: a re-import leaves out contacts whose chats WAHA lists with nothing new (issue 5, rerun target),
fetches exactly the contacts that changed, and still equals the simulator's truth with the latest plan's time.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from waha_pipeline.defs import assets
from waha_pipeline.simulator.models import DIRECT, DatasetSpec
from waha_pipeline.simulator.server import run_in_thread
from waha_pipeline.simulator.state import ChatIndex
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, snapshot, truth
from waha_pipeline_tests.e2e.cli_run import cli
from waha_pipeline_tests.e2e.test_bad_input import make_raw, query, text_template

SPEC = DatasetSpec(seed=29, chats=90, target_messages=450)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def union_truth(sim: Any, first: dict[str, Any], latest: dict[str, Any]) -> dict[str, Any]:
    """Both windows' messages, judged at the latest plan's time and timeout (SPEC 6.7)."""
    return truth(sim.base_url, "demo", window_start=first["window_start"], window_end=latest["window_end"],
                 plan_time=latest["plan_time"], timeout_minutes=latest["timeout"])


def imported(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = cli(capsys, "import", "demo", *args)
    assert code == 0, out + err
    return out


def test_unchanged_channel_fetches_no_messages_and_one_new_message_fetches_its_contact(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    imported(capsys)
    first = latest_plan(url)
    before = snapshot(url)
    planned_chats = sum(len(c["chat_ids"]) for c in first["chunks"])

    # a chat listed without a last-message time cannot be judged: it is fetched again (this dataset has one)
    untimed = {c.id for c in sim.state.dataset.sessions["demo"].chats if c.conversation_timestamp is None}
    untimed &= {chat_id for c in first["chunks"] for chat_id in c["chat_ids"]}
    assert len(untimed) == 1

    sim.reset_stats()
    out = imported(capsys)
    again = latest_plan(url)
    assert f"1 chunk(s) for channel 'demo'; {planned_chats - len(untimed)} chat(s) up to date, left out" in out
    assert [c["chat_ids"] for c in again["chunks"]] == [sorted(untimed)]
    assert set(sim.stats()["messages_by_chat"]) == untimed
    skipped = query(url, "select skipped from import_plans where id = :p", p=again["id"])[0][0]
    assert skipped["up_to_date"] == planned_chats - len(untimed)
    code, out, _ = cli(capsys, "status", "demo")
    assert code == 0 and f"; {planned_chats - len(untimed)} chat(s) up to date, left out of this plan" in out
    after = snapshot(url)
    assert after["ids"] == before["ids"] and after["message_sessions"] == before["message_sessions"]
    assert_matches(after, union_truth(sim, first, again))  # statuses: set when the plan was recorded

    chat, template = text_template(sim, DIRECT)
    time.sleep(max(0.0, again["plan_time"] + 2 - time.time()))  # the new message is later than every coverage
    new_id = f"false_{chat.id}_3EB0NEWAFTERPLAN"
    sim.add_message("demo", chat.id, make_raw(template, chat.id, new_id, again["plan_time"] + 1, "new since"))
    sim.reset_stats()
    imported(capsys)
    latest = latest_plan(url)
    [chunk] = latest["chunks"]
    due = set(chunk["chat_ids"]) - untimed
    assert chat.id in due and len(due) <= 2  # the contact's @c.us and @lid chats
    assert set(sim.stats()["messages_by_chat"]) == set(chunk["chat_ids"])
    assert query(url, "select count(*) from messages where external_id = :e", e=new_id)[0][0] == 1
    assert_matches(snapshot(url), union_truth(sim, first, latest))


def test_renamed_chat_is_imported_again_for_its_name(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    imported(capsys)
    first = latest_plan(url)
    chat, _ = text_template(sim, DIRECT)
    chat.name = "Renamed Since The Last Import"
    sim.state.chat_index["demo"] = ChatIndex(sim.state.dataset.sessions["demo"].chats)  # /chats serves the name
    imported(capsys)
    latest = latest_plan(url)
    [chunk] = latest["chunks"]
    assert chat.id in chunk["chat_ids"]
    assert query(url, "select name from contacts where phone = :p", p=chat.id.split("@")[0]) == [(chat.name,)]
    assert_matches(snapshot(url), union_truth(sim, first, latest))


def test_all_chats_plans_and_fetches_every_chat_again_and_changes_nothing(env, sim, capsys) -> None:
    """The escape hatch for an engine whose chat list lags: no contact is left out as up to date."""
    url = env["DATABASE_URL"]
    imported(capsys)
    first = latest_plan(url)
    before = snapshot(url)
    sim.reset_stats()
    imported(capsys, "--all-chats")
    again = latest_plan(url)
    planned = sorted(chat_id for c in first["chunks"] for chat_id in c["chat_ids"])
    assert sorted(chat_id for c in again["chunks"] for chat_id in c["chat_ids"]) == planned
    assert sorted(sim.stats()["messages_by_chat"]) == planned
    after = snapshot(url)
    assert after["ids"] == before["ids"] and after["message_sessions"] == before["message_sessions"]
    assert_matches(after, union_truth(sim, first, again))


def test_two_imports_within_one_second_get_two_plans(env, sim, capsys, monkeypatch) -> None:
    """The second plan is recorded as its own (one second later), not folded into the first plan's id."""
    url = env["DATABASE_URL"]
    frozen = int(time.time())
    monkeypatch.setattr(assets, "time", types.SimpleNamespace(time=lambda: float(frozen)))
    imported(capsys, "--days", "30")
    first = latest_plan(url)
    imported(capsys, "--days", "180")
    second = latest_plan(url)
    assert (first["plan_time"], second["plan_time"]) == (frozen, frozen + 1)
    assert second["id"] != first["id"] and second["window_start"] == frozen + 1 - 180 * 86400
    assert_matches(snapshot(url), union_truth(sim, second, second))
