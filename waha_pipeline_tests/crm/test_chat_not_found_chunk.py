"""Pins SPEC 6.8 through the chunk runner: a chat WAHA answers 404 for, while its session is WORKING, fails only the
chunk holding it; the chunks after it still fetch and commit (no "channel gone" fail-fast)."""

from __future__ import annotations

from pathlib import Path

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.chunk_runner import ChunkFailed, StageDone
from waha_pipeline_tests.crm.conftest import PLAN_TIME, SESSION, Importer, run_single_chat_chunks
from waha_pipeline_tests.waha.conftest import Row, StoreServer

PHONES = ["4915550100", "4915550101", "4915550102"]


def test_a_chat_not_found_fails_only_its_chunk(store: CrmStore, importer: Importer, tmp_path: Path) -> None:
    server = StoreServer(session=SESSION)
    for n, phone in enumerate(PHONES):
        server.chats[f"{phone}@c.us"] = [Row(f"m{n}-{i}", PLAN_TIME - 600 + i) for i in range(3)]
    server.missing_chats.add(f"{PHONES[1]}@c.us")
    plan_id, events = run_single_chat_chunks(store, importer, tmp_path, PHONES, server)

    failed = [e for e in events if isinstance(e, ChunkFailed)]
    committed = [e.chunk_key for e in events if isinstance(e, StageDone) and e.stage == "committed_rows"]
    assert [(e.chunk_key, e.permanent) for e in failed] == [(f"{SESSION}.c0001", True)]
    assert "cannot serve chat 4915550101@c.us" in failed[0].reason
    assert committed == [f"{SESSION}.c0000", f"{SESSION}.c0002"]
    assert {c.chunk_key: c.status for c in store.plan_chunks(plan_id)} == {
        f"{SESSION}.c0000": "committed", f"{SESSION}.c0001": "failed", f"{SESSION}.c0002": "committed"}
    assert store.counts(importer.channel_id)["messages"] == 6
