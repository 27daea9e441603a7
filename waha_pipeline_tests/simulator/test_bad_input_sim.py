"""The simulator's bad-input tools: the garbage_rate fault (200 + HTML) and chat/message injection."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from waha_pipeline.simulator import DatasetSpec, Faults, SimulatorHandle, run_in_thread
from waha_pipeline.simulator.faults import add_fault_arguments, faults_from_args

from .conftest import ANCHOR

SPEC = DatasetSpec(seed=5, chats=30, target_messages=200)


@pytest.fixture()
def h() -> Iterator[SimulatorHandle]:
    with run_in_thread(SPEC, anchor=ANCHOR) as handle:
        yield handle


def test_garbage_rate_round_trip_validation_and_cli() -> None:
    f = Faults(garbage_rate=0.25, only_kinds=("messages",))
    assert Faults.from_dict(f.to_dict()) == f
    with pytest.raises(ValueError, match="garbage_rate"):
        Faults(garbage_rate=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        Faults(garbage_rate=0.6, error_rate=0.6)
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    assert faults_from_args(parser.parse_args(["--garbage-rate", "0.3"])).garbage_rate == 0.3
    assert Faults(garbage_rate=0.1).random


def test_garbage_is_200_html_on_only_kinds_and_deterministic(h: SimulatorHandle) -> None:
    chat = next(c for c in h.state.dataset.sessions["demo"].chats if c.entries)
    url = f"/api/demo/chats/{quote(chat.id, safe='')}/messages"
    with httpx.Client(base_url=h.base_url, timeout=10) as c:
        h.set_faults(garbage_rate=1.0, only_kinds=("messages",))
        r = c.get(url, params={"limit": 5})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text.lstrip().startswith("<!DOCTYPE html>")
        assert c.get("/api/demo/chats").headers["content-type"].startswith("application/json")  # not in only_kinds
        assert h.stats()["faults"]["garbage"] == 1

        def sequence() -> list[str]:
            h.set_faults(Faults(garbage_rate=0.5, only_kinds=("messages",)))
            return [c.get(url, params={"limit": k}).headers["content-type"][:9] for k in range(1, 30)]

        first = sequence()
        assert first == sequence() and len(set(first)) == 2


def test_injected_chat_and_messages_are_served_and_in_the_truth(h: SimulatorHandle) -> None:
    before = h.truth("demo")
    with httpx.Client(base_url=h.base_url, timeout=10) as c:
        r = c.post("/_sim/sessions/demo/chats", json={"id": "12345@weird.server", "name": "Weird"})
        assert r.status_code == 200 and r.json()["kind"] == "injected"
        assert c.post("/_sim/sessions/demo/chats", json={"id": "12345@weird.server"}).status_code == 400
        ids = [ch["id"] for ch in c.get("/api/demo/chats").json()]
        assert "12345@weird.server" in ids
        raw = {"id": "false_12345@weird.server_X1", "timestamp": ANCHOR - 10, "fromMe": False, "body": "oi"}
        assert c.post("/_sim/sessions/demo/messages",
                      json={"chat_id": "12345@weird.server", "raw": raw}).status_code == 200
        served = c.get("/api/demo/chats/12345%40weird.server/messages").json()
        assert served == [raw]
        # a malformed message in an importable chat: a reject in the truth, served in timestamp order
        chat = next(ch for ch in h.state.dataset.sessions["demo"].chats
                    if ch.kind == "direct" and len(ch.entries) >= 2)
        ts = chat.entries[0].ts
        bad = {"timestamp": ts, "fromMe": True, "body": "no id"}
        r = c.post("/_sim/sessions/demo/messages", json={"chat_id": chat.id, "raw": bad, "defect": "missing_id"})
        assert r.status_code == 200, r.text
        page = c.get(f"/api/demo/chats/{quote(chat.id, safe='')}/messages",
                     params={"sortOrder": "asc", "limit": 100}).json()
        assert bad in page and page.index(bad) <= 2
        assert c.post("/_sim/sessions/demo/messages",
                      json={"chat_id": chat.id, "raw": {"body": "x"}}).status_code == 400  # good needs an id
    after = h.truth("demo")
    assert after["skipped_chats"]["injected"] == 1
    assert after["messages"] == before["messages"]
    assert {"chat_id": chat.id, "external_id": None, "defect": "missing_id"} in after["rejects"]
    assert len(after["rejects"]) == len(before["rejects"]) + 1
