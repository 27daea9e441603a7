"""A simulator that gains messages while it runs: new messages move WAHA's chat list, late history does not,
new chats appear, and the ground truth grows by exactly what was added (over real loopback HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from waha_pipeline.simulator import DatasetSpec, SimulatorHandle, run_in_thread

from .conftest import ANCHOR
from .wire import is_good, wire_time

SPEC = DatasetSpec(seed=5, chats=80, target_messages=420)
AT = ANCHOR + 600


def spec_for(engine: str) -> DatasetSpec:
    return DatasetSpec(seed=SPEC.seed, chats=SPEC.chats, target_messages=SPEC.target_messages, engine=engine)


@pytest.fixture(params=["gows", "noweb", "webjs"])
def grown_sim(request: pytest.FixtureRequest) -> Iterator[SimulatorHandle]:
    """A simulator of its own per test: growth changes it."""
    with run_in_thread(spec_for(request.param), anchor=ANCHOR) as handle:
        yield handle


def listed(client: httpx.Client) -> dict[str, int | None]:
    """Chat id (the @c.us form) -> the time the chat list shows, whatever the engine's shape."""
    out: dict[str, int | None] = {}
    for chat in client.get("/api/demo/chats").json():
        raw = chat["id"]
        serial = raw["_serialized"] if isinstance(raw, dict) else raw
        out[serial.replace("@s.whatsapp.net", "@c.us")] = chat.get("conversationTimestamp", chat.get("timestamp"))
    return out


def served_ids(sim: SimulatorHandle, client: httpx.Client, chat_id: str, limit: int = 7) -> dict[str, int | None]:
    """External id -> wire time of every row the chat's message pages serve (offset paging to the store's end:
    an empty page is not the end)."""
    stored = len(sim.state.dataset.sessions["demo"].chats_by_id[chat_id].entries)
    out: dict[str, int | None] = {}
    for offset in range(0, stored, limit):
        page = client.get(f"/api/demo/chats/{quote(chat_id, safe='')}/messages",
                          params={"limit": limit, "offset": offset, "downloadMedia": "false",
                                  "sortOrder": "asc"}).json()
        for m in page:
            out[m["id"]] = wire_time(m) if is_good(m) else None
    return out


def truth_ids(sim: SimulatorHandle) -> dict[str, dict]:
    return {m["external_id"]: m for m in sim.truth()["messages"]}


def test_growth_moves_the_chat_list_serves_pages_and_grows_the_truth_by_its_counts(grown_sim: SimulatorHandle) -> None:
    sim = grown_sim
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        before_list = listed(client)
        before_truth = sim.truth()
        before_ids = truth_ids(sim)
        result = sim.grow("demo", new_messages=9, new_chats=2, late_messages=5, at=AT, seed=1)
        after_list = listed(client)

        assert (result["new_messages"], result["new_chats"], result["late_messages"], result["rejects"]) == (9, 2, 5, 0)
        grown, new, late = (set(result["chats"][k]) for k in ("new_messages", "new_chats", "late_messages"))
        assert len(grown) == 3 and len(new) == 2 and 1 <= len(late) <= 2 and not grown & late
        # the chat list: grown chats now show `at`, new chats appear at `at`, nothing else moved
        assert set(after_list) == set(before_list) | new and not new & set(before_list)
        assert {c: after_list[c] for c in grown | new} == dict.fromkeys(grown | new, AT)
        assert all(before_list[c] < AT for c in grown)  # type: ignore[operator]
        assert {c: t for c, t in after_list.items() if c not in grown | new} == {
            c: t for c, t in before_list.items() if c not in grown}

        # the message pages serve every added message, at its time: new ones after the chat's old newest
        for what in ("new_messages", "new_chats", "late_messages"):
            for chat_id in result["chats"][what]:
                served = served_ids(sim, client, chat_id)
                added = [i for i in result["external_ids"][what] if f"_{chat_id}_" in i]
                assert added and all(served[i] is not None for i in added)
                if what == "new_messages":
                    assert all(before_list[chat_id] <= served[i] <= AT for i in added)  # type: ignore[operator]
                if what == "late_messages":
                    assert all(served[i] < before_list[chat_id] for i in added)  # type: ignore[operator]

    # the truth: the anchor moved to `at`, and exactly the added messages (and the new chats' contacts) appeared
    assert sim.anchor == AT
    after_truth = sim.truth()
    after_ids = truth_ids(sim)
    added_ids = {i for ids in result["external_ids"].values() for i in ids}
    assert set(after_ids) - set(before_ids) == added_ids and set(before_ids) <= set(after_ids)
    assert len(after_ids) == len(before_ids) + 9 + result["new_chat_messages"] + 5
    assert len(after_truth["contacts"]) == len(before_truth["contacts"]) + 2
    assert {c["phone"] for c in after_truth["contacts"]} >= {c.split("@")[0] for c in new}
    assert after_truth["rejects"] == before_truth["rejects"]
    for chat_id in new:  # a short conversation ending at `at`
        times = [after_ids[i]["sent_at"] for i in result["external_ids"]["new_chats"] if f"_{chat_id}_" in i]
        assert 2 <= len(times) <= 5 and max(times) == AT


def test_the_same_seed_grows_the_same_history_and_a_repeated_seed_draws_new_ids() -> None:
    def grow_twice(seed: int) -> tuple[dict, dict, bytes]:
        with run_in_thread(SPEC, anchor=ANCHOR) as sim:
            first = sim.grow("demo", new_messages=7, new_chats=2, late_messages=3, at=AT, seed=seed)
            second = sim.grow("demo", new_messages=4, at=AT + 60, seed=seed)
            chats = httpx.get(f"{sim.base_url}/api/demo/chats", timeout=10).content
            return first, second, chats

    one, two = grow_twice(3), grow_twice(3)
    assert one == two
    first, second, _ = one
    assert not set(first["external_ids"]["new_messages"]) & set(second["external_ids"]["new_messages"])
    other = grow_twice(4)[0]
    assert other["external_ids"] != first["external_ids"]


def test_grow_over_http_answers_what_it_added_and_rejects_bad_bodies() -> None:
    with run_in_thread(SPEC, anchor=ANCHOR) as sim, httpx.Client(base_url=sim.base_url, timeout=10) as client:
        before = sim.stats()["control"]
        r = client.post("/_sim/sessions/demo/grow", json={"new_messages": 5, "into_chats": 5, "at": AT, "seed": 9})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["new_messages"] == 5 and len(body["chats"]["new_messages"]) == 5
        assert sim.stats()["control"] == before + 1 and sim.stats()["total"] == 0  # not a WAHA request
        assert len(sim.truth()["messages"]) == len(truth_ids(sim))
        for bad in ({"new_messages": -1}, {"new_chats": "2"}, {"colour": 1}, {"seed": True},
                    {"new_messages": 1, "at": AT, "since": AT + 1}, [1]):
            r = client.post("/_sim/sessions/demo/grow", json=bad)
            assert r.status_code == 400, (bad, r.text)
        assert client.post("/_sim/sessions/nope/grow", json={"new_messages": 1}).status_code == 404
        assert client.get("/_sim/sessions/demo/grow").status_code == 404  # POST only
        # `since` spreads new messages back in time, never before it
        r = client.post("/_sim/sessions/demo/grow", json={"new_messages": 12, "into_chats": 2, "at": AT + 3600,
                                                          "since": AT + 3000, "seed": 2})
        grown = r.json()["external_ids"]["new_messages"]
        sent = {m["external_id"]: m["sent_at"] for m in sim.truth()["messages"]}
        assert all(AT + 3000 <= sent[i] <= AT + 3600 for i in grown) and max(sent[i] for i in grown) == AT + 3600
