"""Pins SPEC 6.8 through the chunk runner: a chunk whose fetched messages pass IMPORT_CHUNK_MAX_MB fails alone,
permanently (retrying cannot shrink it), with a reason naming the chat being read; the other chunks commit."""

from __future__ import annotations

from pathlib import Path

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.importer.chunk_runner import ChunkFailed, StageDone
from waha_pipeline_tests.crm.conftest import PLAN_TIME, SESSION, Importer, run_single_chat_chunks
from waha_pipeline_tests.waha.conftest import Row, StoreServer

PHONES = ["4915550200", "4915550201", "4915550202"]
BUDGET = 20_000  # bytes of fetched JSON text per chunk


def test_a_chunk_over_its_memory_budget_fails_alone_naming_the_chat(
    store: CrmStore, importer: Importer, tmp_path: Path
) -> None:
    server = StoreServer(session=SESSION)
    for n, phone in enumerate(PHONES):
        chat = f"{phone}@c.us"
        count = 2_000 if n == 1 else 5  # ~60 bytes each: 2,000 pass the budget, 5 do not
        server.chats[chat] = [Row(f"false_{chat}_M{n}x{i:05d}", PLAN_TIME - 3000 + i) for i in range(count)]
    _, events = run_single_chat_chunks(store, importer, tmp_path, PHONES, server, max_chunk_bytes=BUDGET)

    failed = [e for e in events if isinstance(e, ChunkFailed)]
    committed = [e.chunk_key for e in events if isinstance(e, StageDone) and e.stage == "committed_rows"]
    assert [(e.chunk_key, e.stage, e.permanent) for e in failed] == [(f"{SESSION}.c0001", "fetched_messages", True)]
    assert "IMPORT_CHUNK_MAX_MB" in failed[0].reason and "chat 4915550201@c.us" in failed[0].reason
    assert committed == [f"{SESSION}.c0000", f"{SESSION}.c0002"]
    assert store.counts(importer.channel_id)["messages"] == 10
