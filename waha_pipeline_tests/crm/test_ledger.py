"""The import ledger and channels: plans and chunks round-trip, committed chunks are never downgraded."""

from __future__ import annotations

import dataclasses
import re

import pytest

from waha_pipeline.crm.store import AmbiguousChannel, CrmStore
from waha_pipeline.domain.planning import channel_slug
from waha_pipeline.domain import ids
from waha_pipeline.errors import ChunkError
from waha_pipeline_tests.crm.conftest import (
    PLAN_TIME,
    SESSION,
    TENANT,
    Importer,
    lid_contact,
    make_plan,
    message,
    phone_contact,
    planned_chats,
)


def test_channel_upsert_keeps_timeout_setting(store: CrmStore) -> None:
    first = store.ensure_channel(TENANT, SESSION, "Sales")
    assert first.id == ids.channel_id(TENANT, SESSION) and first.session_timeout_minutes == 30
    with store.engine.begin() as conn:
        from waha_pipeline.crm.schema import channels

        conn.execute(channels.update().values(session_timeout_minutes=45))
    again = store.ensure_channel(TENANT, SESSION, "Sales team")
    assert (again.id, again.name, again.session_timeout_minutes) == (first.id, "Sales team", 45)
    assert store.get_channel(TENANT, SESSION) == again
    assert store.find_channel(SESSION) == again
    assert store.channel_by_id(first.id) == again
    assert store.get_channel("other", SESSION) is None and store.find_channel("nope") is None


@pytest.mark.parametrize("days", [0, 7], ids=["whole-history", "7-days"])
def test_plan_round_trip(store: CrmStore, days: int) -> None:
    channel = store.ensure_channel(TENANT, SESSION, None)
    chats = planned_chats([phone_contact("4915550001", lid="123", name="Al"), lid_contact("777")])
    plan = make_plan(days=days, chats=chats, chunks=3)
    plan_id = ids.plan_id(channel.id, PLAN_TIME)
    store.record_plan(TENANT, channel.id, plan, plan_id)
    store.record_plan(TENANT, channel.id, plan, plan_id)  # idempotent

    record = store.latest_plan(channel.id)
    assert record is not None
    assert (record.id, record.plan_time, record.window_end, record.days) == (plan_id, PLAN_TIME, PLAN_TIME, days)
    assert record.window_start == (None if days == 0 else PLAN_TIME - days * 86400)
    assert (record.session_timeout_minutes, record.chats_total, record.skipped) == (30, 2, {"broadcast": 1})
    chunks = store.plan_chunks(plan_id)
    assert [c.chunk_key for c in chunks] == [f"{SESSION}.c0000", f"{SESSION}.c0001", f"{SESSION}.c0002"]
    assert {c.status for c in chunks} == {"pending"}
    chunk, loaded = store.load_chunk(plan_id, f"{SESSION}.c0000")
    assert loaded == list(chats) and chunk.chat_ids == ("4915550001@c.us", "777@lid") and chunk.chats == 2
    found = store.latest_chunk(f"{SESSION}.c0000")
    assert found is not None and found[0] == record and found[2] == list(chats)
    with pytest.raises(ChunkError):
        store.load_chunk(plan_id, "nope.c0000")


def test_latest_plan_is_by_plan_time(store: CrmStore) -> None:
    channel = store.ensure_channel(TENANT, SESSION, None)
    for plan_time in (PLAN_TIME + 100, PLAN_TIME, PLAN_TIME + 50):
        store.record_plan(TENANT, channel.id, make_plan(plan_time=plan_time), ids.plan_id(channel.id, plan_time))
    latest = store.latest_plan(channel.id)
    assert latest is not None and latest.plan_time == PLAN_TIME + 100
    assert store.latest_plan(ids.channel_id(TENANT, "other")) is None


def test_failed_never_downgrades_committed(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", PLAN_TIME - 100)])
    plan_id, key = batch.context.plan_id, batch.context.chunk_key
    other = f"{SESSION}.c0001"

    store.mark_chunk_started(plan_id, key)
    store.mark_chunk_failed(plan_id, key, "WAHA 500\nat page 3")
    chunk, _ = store.load_chunk(plan_id, key)
    assert (chunk.status, chunk.attempts, chunk.last_error) == ("failed", 1, "WAHA 500 at page 3")

    store.commit_chunk(batch)
    store.mark_chunk_started(plan_id, key)
    store.mark_chunk_failed(plan_id, key, "late failure of a re-run")
    chunk, _ = store.load_chunk(plan_id, key)
    assert (chunk.status, chunk.last_error, chunk.attempts) == ("committed", None, 2)
    assert store.committed_chunk_keys(plan_id) == {key}
    assert store.load_chunk(plan_id, other)[0].status == "pending"


def test_a_channel_is_tenant_session_and_account(store: CrmStore) -> None:
    """Two WAHA servers' `default` sessions are two channels of one tenant; a name they share finds neither
    alone; a server moving to a new URL keeps its channel."""
    a = store.ensure_channel(TENANT, "default", "Loja A", account="5511911110001", waha_server="http://h:3001")
    b = store.ensure_channel(TENANT, "default", "Loja B", account="5511922220002", waha_server="http://h:3002")
    other = store.ensure_channel("beta", "default", "Beta", account="5511933330003", waha_server="http://h:3003")
    assert len({a.id, b.id, other.id}) == 3 and len({a.slug, b.slug, other.slug}) == 3
    assert a.slug == channel_slug("default", "5511911110001") and re.fullmatch(r"default-[0-9a-f]{6}", a.slug)
    assert store.channel_by_slug(b.slug) == b and store.get_channel(TENANT, "default", "5511922220002") == b
    assert store.find_channel(a.slug) == a
    with pytest.raises(AmbiguousChannel) as caught:
        store.find_channel("default")
    assert {c.slug for c in caught.value.candidates} == {a.slug, b.slug, other.slug}
    assert "…0002" in str(caught.value) and "http://h:3002" in str(caught.value)

    moved = store.ensure_channel(TENANT, "default", "Loja A", account="5511911110001", waha_server="http://new:9")
    assert (moved.id, moved.slug, moved.waha_server) == (a.id, a.slug, "http://new:9")
    # the same account under another tenant is another channel, with a slug of its own
    twin = store.ensure_channel("beta", "default", "A", account="5511911110001", waha_server="http://h:3001")
    assert twin.id != a.id and twin.slug not in {a.slug, b.slug, other.slug}


def test_a_chunk_key_finds_only_its_channels_plan(store: CrmStore) -> None:
    """Chunk keys name the channel by its slug: a plan of another channel of the same session name is never
    picked, however recent."""
    a = store.ensure_channel(TENANT, "default", None, account="5511911110001")
    b = store.ensure_channel(TENANT, "default", None, account="5511922220002")
    chats = planned_chats([phone_contact("4915550001")])
    for channel, plan_time in ((a, PLAN_TIME), (b, PLAN_TIME + 10)):
        plan = dataclasses.replace(make_plan(plan_time=plan_time, chats=chats), channel_slug=channel.slug)
        plan = dataclasses.replace(plan, chunks=tuple(
            dataclasses.replace(c, key=f"{channel.slug}.c{c.index:04d}") for c in plan.chunks))
        store.record_plan(TENANT, channel.id, plan, ids.plan_id(channel.id, plan_time))
    found = store.latest_chunk(f"{a.slug}.c0000")
    assert found is not None and found[0].channel_id == a.id and found[0].plan_time == PLAN_TIME
    assert store.latest_chunk("default.c0000") is None
