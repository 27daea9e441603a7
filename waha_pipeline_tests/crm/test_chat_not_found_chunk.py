"""Pins SPEC 6.8 through the chunk runner: a chat WAHA answers 404 for, while its session is WORKING, fails only the
chunk holding it; the chunks after it still fetch and commit (no "channel gone" fail-fast)."""

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

PHONES = ["4915550100", "4915550101", "4915550102"]


def test_a_chat_not_found_fails_only_its_chunk(store: CrmStore, importer: Importer, tmp_path: Path) -> None:
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
        server.chats[chat.chat_id] = [Row(f"m{n}-{i}", PLAN_TIME - 600 + i) for i in range(3)]
    server.missing_chats.add(chats[1].chat_id)

    with BackgroundLoop() as serving:
        serving.run(server.__aenter__())
        try:
            runner = ChunkRunner(store, StageStore(tmp_path), lambda: WahaClient(
                server.base_url, limiter=ServerLimiter(server.base_url, concurrency=4)))
            events = list(runner.run([c.key for c in plan.chunks], set(STAGES)))
        finally:
            serving.run(server.__aexit__())

    failed = [e for e in events if isinstance(e, ChunkFailed)]
    committed = [e.chunk_key for e in events if isinstance(e, StageDone) and e.stage == "committed_rows"]
    assert [(e.chunk_key, e.permanent) for e in failed] == [(f"{SESSION}.c0001", True)]
    assert "cannot serve chat 4915550101@c.us" in failed[0].reason
    assert committed == [f"{SESSION}.c0000", f"{SESSION}.c0002"]
    assert {c.chunk_key: c.status for c in store.plan_chunks(plan_id)} == {
        f"{SESSION}.c0000": "committed", f"{SESSION}.c0001": "failed", f"{SESSION}.c0002": "committed"}
    assert store.counts(importer.channel_id)["messages"] == 6
