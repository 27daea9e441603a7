"""Text PostgreSQL cannot store (NUL) and the bounds of a chunk's commit (lock and statement timeouts).

A NUL in a name is dropped; a NUL in a message's id, chat, sender or body rejects that message alone, with a reason
naming the column, the chat and the message, and the rest of the chunk commits with sessions that do not count it.
A lock held elsewhere ends the commit with CrmBusy after the store's lock timeout (CRM_LOCK_TIMEOUT_SECONDS), logged
while it waits.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import sqlalchemy as sa

from waha_pipeline.crm import commit, temp_tables
from waha_pipeline.crm.commit import CrmBusy
from waha_pipeline.crm.schema import contacts, message_rejects, messages, sessions
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import REJECT_COLUMNS, conform, empty_frame
from waha_pipeline.errors import ConfigError
from waha_pipeline.importer.chunk_runner import is_permanent
from waha_pipeline.settings import Settings
from waha_pipeline_tests.crm.conftest import PLAN_TIME, Importer, message, phone_contact, snapshot

GROUP = "120363000000000001@g.us"


def rows(store: CrmStore, query: sa.Select) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query).all()]


def group_contact() -> dict[str, object]:
    return {"id": ids.contact_id("acme", group_id=GROUP), "phone": None, "lid": None, "group_id": GROUP,
            "name": "Team\x00 chat"}


def test_a_nul_in_a_name_is_dropped_and_the_chunk_commits(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001", name="Ali\x00ce")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", PLAN_TIME - 3600, push_name="A\x00")])
    result = store.commit_chunk(batch)
    assert (result.messages_inserted, result.rejects) == (1, 0)
    assert rows(store, sa.select(contacts.c.name)) == [("Alice",)]
    assert rows(store, sa.select(messages.c.push_name)) == [("A",)]


def test_a_nul_in_a_sender_or_body_rejects_that_message_alone(store: CrmStore, importer: Importer) -> None:
    team = group_contact()
    cid = importer.channel_id
    first = {**message(cid, team, "g1", PLAN_TIME - 7200, chat_id=GROUP), "sender_id": "4915550002@c.us"}
    bad_sender = {**message(cid, team, "g2", PLAN_TIME - 7100, chat_id=GROUP), "sender_id": "49155\x0050003@c.us"}
    bad_body = {**message(cid, team, "g3", PLAN_TIME - 100, chat_id=GROUP), "body": "hi\x00"}  # a session of its own
    batch = importer.batch([team], [first, bad_sender, bad_body])

    result = store.commit_chunk(batch)
    assert (result.messages_inserted, result.rejects, result.sessions) == (1, 2, 1)
    assert rows(store, sa.select(messages.c.external_id)) == [("g1",)]
    assert rows(store, sa.select(contacts.c.name)) == [("Team chat",)]
    assert rows(store, sa.select(sessions.c.message_count)) == [(1,)]  # the rejected rows count nowhere
    assert sorted(rows(store, sa.select(message_rejects.c.external_id, message_rejects.c.reason))) == [
        ("g2", f"sender_id contains a NUL character (chat {GROUP}, message g2)"),
        ("g3", f"body contains a NUL character (chat {GROUP}, message g3)"),
    ]
    [payload] = rows(store, sa.select(message_rejects.c.payload).where(message_rejects.c.external_id == "g2"))
    assert '"sender_id":"49155\\u000050003@c.us"' in str(payload[0])

    before = snapshot(store)
    store.commit_chunk(importer.batch([team], [first, bad_sender, bad_body]))  # a re-run adds nothing
    assert snapshot(store) == before


def test_a_contact_whose_every_message_is_rejected_is_not_created(store: CrmStore, importer: Importer) -> None:
    alice, bob = phone_contact("4915550001", name="Alice"), phone_contact("4915550002", name="Bob")
    cid = importer.channel_id
    batch = importer.batch([alice, bob], [message(cid, alice, "a1", PLAN_TIME - 60),
                                          message(cid, bob, "b\x001", PLAN_TIME - 60)])
    result = store.commit_chunk(batch)
    assert (result.messages_inserted, result.rejects, result.contacts) == (1, 1, 1)
    assert rows(store, sa.select(contacts.c.name)) == [("Alice",)]
    assert rows(store, sa.select(message_rejects.c.reason)) == [
        ("external_id contains a NUL character (chat 4915550002@c.us, message b\\u00001)",)]


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_lock_never_released_fails_the_commit_clearly_and_it_commits_once_released(
    store: CrmStore, importer: Importer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = CrmStore(store.engine, commit_timeouts=(1.5, 300.0))  # the fixture's engine, its own commit bounds
    monkeypatch.setattr(commit, "LOCK_LOG_INTERVAL_S", 0.05)
    alice = phone_contact("4915550001", name="Alice")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", PLAN_TIME - 3600)])
    caplog.set_level(logging.WARNING, logger="waha_pipeline.crm.commit")

    with store.engine.connect() as holder, holder.begin():
        holder.execute(sa.text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
        with pytest.raises(CrmBusy) as caught:
            store.commit_chunk(batch)
    assert str(caught.value) == ("chunk sales.c0000: waited 1.5 s for a lock on the CRM tables held by another "
                                 "transaction (CRM_LOCK_TIMEOUT_SECONDS); nothing was written")
    assert not is_permanent(caught.value)  # retried by the step's RetryPolicy
    assert any(r.getMessage().startswith("chunk sales.c0000 waiting for a lock on the CRM tables for ")
               for r in caplog.records)
    assert store.counts(importer.channel_id)["messages"] == 0

    assert store.commit_chunk(batch).messages_inserted == 1  # released: the same chunk commits


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_statement_past_its_timeout_fails_the_commit_clearly(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001", name="Alice")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", PLAN_TIME - 3600)])
    with store.engine.connect() as holder, holder.begin():
        holder.execute(sa.text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
        with store.engine.begin() as conn, pytest.raises(CrmBusy) as caught:
            commit.commit_chunk(conn, batch, timeouts=(30.0, 0.5))  # the lock wait outlasts the statement
    assert str(caught.value) == ("chunk sales.c0000: a statement of the commit ran longer than 0.5 s "
                                 "(CRM_STATEMENT_TIMEOUT_SECONDS); nothing was written")


def test_settings_read_the_commit_timeouts_and_reject_a_bad_one() -> None:
    env = {"CRM_LOCK_TIMEOUT_SECONDS": "1.5", "CRM_STATEMENT_TIMEOUT_SECONDS": "7"}
    assert Settings.from_env(env).crm_commit_timeouts == (1.5, 7.0)
    assert Settings.from_env({}).crm_commit_timeouts == commit.DEFAULT_TIMEOUTS
    for name in env:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({name: "-1"})
        assert str(caught.value) == f"{name} must be a positive number, got '-1'"


def test_a_concatenated_frame_loads_as_its_rows(store: CrmStore) -> None:
    """pd.concat makes chunked Arrow columns, which Arrow's CSV writer garbles unless they are combined first."""
    pool = pd.Series(["x" * 100] * 50 + ["a@c.us", "b@c.us"], dtype="string").iloc[50:]
    tail = conform(pd.DataFrame({"id": ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"],
                                 "chat_id": pool, "external_id": pool, "reason": pool + " r", "payload": ["{}", "{}"]}),
                   REJECT_COLUMNS)
    frame = pd.concat([empty_frame(REJECT_COLUMNS), tail], ignore_index=True)
    with store.engine.begin() as conn:
        temp_tables.create(conn)
        temp_tables.load(conn, temp_tables.temp_rejects, frame)
        loaded = conn.execute(sa.select(temp_tables.temp_rejects.c.chat_id, temp_tables.temp_rejects.c.reason)).all()
        temp_tables.drop(conn)
    assert sorted(tuple(r) for r in loaded) == [("a@c.us", "a@c.us r"), ("b@c.us", "b@c.us r")]
