"""Pins SPEC 6.8 through the chunk runner: a chunk whose fetched messages pass IMPORT_CHUNK_MAX_MB fails alone,
permanently (retrying cannot shrink it), with a reason naming the chat being read; the other chunks commit."""

from __future__ import annotations

from pathlib import Path

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.planning import ChannelPlan, ChunkPlan, PlannedChat
from waha_pipeline.importer.background_loop import BackgroundLoop
from waha_pipeline.importer.chunk_runner import ChunkFailed, ChunkRunner, StageDone
from waha_pipeline.importer.stage_plan import STAGES
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.limiter import ServerLimiter
from waha_pipeline_tests.crm.conftest import PLAN_TIME, SESSION, TENANT, Importer
from waha_pipeline_tests.waha.conftest import Row, StoreServer

PHONES = ["4915550200", "4915550201", "4915550202"]
BUDGET = 20_000  # bytes of fetched JSON text per chunk


def test_a_chunk_over_its_memory_budget_fails_alone_naming_the_chat(
    store: CrmStore, importer: Importer, tmp_path: Path
) -> None:
    chats = [PlannedChat(f"{p}@c.us", "direct", None, phone=p, lid=None) for p in PHONES]
    plan = ChannelPlan(
        waha_session=SESSION, channel_slug=SESSION, plan_time=PLAN_TIME, window_start=PLAN_TIME - 86400,
        window_end=PLAN_TIME, days=1, chunk_size=1, session_timeout_minutes=30, include_groups=False,
        chunks=tuple(ChunkPlan(f"{SESSION}.c{k:04d}", k, (chat,)) for k, chat in enumerate(chats)),
    )
    plan_id = ids.plan_id(importer.channel_id, PLAN_TIME)
    store.record_plan(TENANT, importer.channel_id, plan, plan_id)
    server = StoreServer(session=SESSION)
    for n, chat in enumerate(chats):
        count = 2_000 if n == 1 else 5  # ~60 bytes each: 2,000 pass the budget, 5 do not
        server.chats[chat.chat_id] = [Row(f"false_{chat.chat_id}_M{n}x{i:05d}", PLAN_TIME - 3000 + i)
                                      for i in range(count)]

    with BackgroundLoop() as serving:
        serving.run(server.__aenter__())
        try:
            runner = ChunkRunner(store, StageStore(tmp_path), lambda: WahaClient(
                server.base_url, limiter=ServerLimiter(server.base_url, concurrency=4)), max_chunk_bytes=BUDGET)
            events = list(runner.run([c.key for c in plan.chunks], set(STAGES)))
        finally:
            serving.run(server.__aexit__())

    failed = [e for e in events if isinstance(e, ChunkFailed)]
    committed = [e.chunk_key for e in events if isinstance(e, StageDone) and e.stage == "committed_rows"]
    assert [(e.chunk_key, e.stage, e.permanent) for e in failed] == [(f"{SESSION}.c0001", "fetched_messages", True)]
    assert "IMPORT_CHUNK_MAX_MB" in failed[0].reason and "chat 4915550201@c.us" in failed[0].reason
    assert committed == [f"{SESSION}.c0000", f"{SESSION}.c0002"]
    assert store.counts(importer.channel_id)["messages"] == 10
