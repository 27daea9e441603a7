"""commit_chunk on SQLite and PostgreSQL: one transaction, idempotent, lid merges, sessions over stored + new.

Pins SPEC 6.3 (contacts, lid merge), 6.4 (sessions, statuses), 6.5 (sent_at), 6.6 (atomicity), 6.7 (idempotence
and convergence) and 6.8 (rejects).
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from waha_pipeline.crm import schema
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline_tests.crm.conftest import (
    PLAN_TIME,
    TENANT,
    Importer,
    lid_contact,
    message,
    phone_contact,
    reject,
    snapshot,
)

T0 = PLAN_TIME - 10 * 86400
MIN = 60


def _rows(store: CrmStore, table: sa.Table, *where: sa.ColumnElement[bool]) -> list[sa.Row]:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(table).where(*where)).all()


# ---------------------------------------------------------------------------------------------- TESTS


def test_commit_inserts_rows_and_marks_chunk_committed(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001", name="Alice")
    ch = importer.channel_id
    batch = importer.batch(
        [alice],
        [message(ch, alice, "m1", T0), message(ch, alice, "m2", T0 + 60, from_me=True)],
        rejects=[reject(ch, "4915550001@c.us", None, "missing id")],
    )
    result = store.commit_chunk(batch)

    assert (result.messages_inserted, result.messages_total, result.sessions, result.contacts, result.rejects) == (
        2, 2, 1, 1, 1,
    )  # fmt: skip
    assert store.counts(ch) == {"messages": 2, "contacts": 1, "sessions": 1, "rejects": 1}
    chunk = {c.chunk_key: c for c in store.plan_chunks(batch.context.plan_id)}[batch.context.chunk_key]
    assert (chunk.status, chunk.messages, chunk.sessions, chunk.contacts, chunk.rejects) == ("committed", 2, 1, 1, 1)
    assert chunk.committed_at is not None and chunk.committed_at.tzinfo is not None
    (session,) = _rows(store, schema.sessions)
    assert session.id == ids.session_id(ch, alice["id"], "m1")
    assert (session.message_count, session.messages_from_contact, session.messages_from_agent) == (2, 1, 1)
    assert session.status == "closed"
    assert {r.session_id for r in _rows(store, schema.messages)} == {session.id}


def test_commit_twice_is_idempotent(store: CrmStore, importer: Importer) -> None:
    alice, bob = phone_contact("4915550001", name="Alice"), lid_contact("777", name="Bob")
    ch = importer.channel_id
    msgs = [message(ch, alice, f"a{i}", T0 + i * 45 * MIN) for i in range(5)]
    msgs += [message(ch, bob, f"b{i}", T0 + i * MIN, from_me=i % 2 == 0) for i in range(3)]
    rejects = [reject(ch, "777@lid", "bad1", "non-numeric timestamp"), reject(ch, "777@lid", None, "no id")]
    batch = importer.batch([alice, bob], msgs, rejects=rejects)

    first = store.commit_chunk(batch)
    before = snapshot(store)
    second = store.commit_chunk(batch)

    assert first.messages_inserted == 8 and second.messages_inserted == 0
    assert (first.sessions, first.contacts, first.rejects) == (second.sessions, second.contacts, second.rejects)
    assert snapshot(store) == before
    assert store.counts(ch) == {"messages": 8, "contacts": 2, "sessions": 6, "rejects": 2}


def test_duplicate_external_ids_in_one_batch_are_collapsed(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001")
    ch = importer.channel_id
    result = store.commit_chunk(importer.batch([alice], [message(ch, alice, "m1", T0)] * 3))
    assert result.messages_inserted == 1
    assert store.counts(ch)["messages"] == 1


@pytest.mark.parametrize("breakage", ["message without contact", "contact without identity", "reject without chat"])
def test_failure_mid_commit_leaves_nothing_and_is_recorded(store: CrmStore, importer: Importer, breakage: str) -> None:
    alice = phone_contact("4915550001", name="Alice")
    ch = importer.channel_id
    msgs = [message(ch, alice, "m1", T0)]
    contacts = [alice]
    rejects = [reject(ch, "4915550001@c.us", None, "no id")]
    if breakage == "message without contact":
        msgs.append({**message(ch, alice, "m2", T0 + 1), "contact_id": None})
    elif breakage == "reject without chat":  # fails after contacts, messages and sessions were written
        rejects.append({**reject(ch, "x@c.us", "r2", "bad"), "chat_id": None})
    else:
        contacts.append({"id": ids.contact_id(TENANT, phone="1"), "phone": None, "lid": None, "group_id": None,
                         "name": "ghost"})  # fmt: skip
    batch = importer.batch(contacts, msgs, rejects=rejects)

    with pytest.raises((sa.exc.IntegrityError, ValueError)):
        store.commit_chunk(batch)

    assert store.counts(ch) == {"messages": 0, "contacts": 0, "sessions": 0, "rejects": 0}
    assert _rows(store, schema.contacts) == []
    plan_id, key = batch.context.plan_id, batch.context.chunk_key
    assert key not in store.committed_chunk_keys(plan_id)
    store.mark_chunk_started(plan_id, key)
    store.mark_chunk_failed(plan_id, key, "IntegrityError: " + "x" * 2000)
    chunk, _ = store.load_chunk(plan_id, key)
    assert chunk.status == "failed" and chunk.attempts == 1
    assert chunk.last_error is not None and chunk.last_error.startswith("IntegrityError") and len(chunk.last_error) <= 500

    # the same chunk, fixed, commits on its re-run
    fixed = importer.batch([alice], [message(ch, alice, "m1", T0)])
    store.commit_chunk(fixed)
    assert key in store.committed_chunk_keys(plan_id)
    assert store.load_chunk(plan_id, key)[0].last_error is None


def test_lid_only_contact_is_merged_into_phone_contact(store: CrmStore, importer: Importer) -> None:
    ch = importer.channel_id
    ghost = lid_contact("555000", name="Carol (lid)")
    store.commit_chunk(importer.batch([ghost], [message(ch, ghost, f"l{i}", T0 + i * MIN) for i in range(3)]))
    assert len(_rows(store, schema.sessions)) == 1

    carol = phone_contact("4915550003", lid="555000")  # WAHA now maps the lid to this phone
    result = store.commit_chunk(
        importer.batch([carol], [message(ch, carol, "p1", T0 + 5 * MIN), message(ch, carol, "p2", T0 + 90 * MIN)])
    )

    assert result.contacts_merged == 1
    (contact,) = _rows(store, schema.contacts)
    assert (contact.id, contact.phone, contact.lid) == (carol["id"], "4915550003", "555000")
    assert contact.name == "Carol (lid)"  # the merged contact's name survives when the phone contact has none
    msgs = _rows(store, schema.messages)
    assert len(msgs) == 5 and {m.contact_id for m in msgs} == {carol["id"]}
    sessions = sorted(_rows(store, schema.sessions), key=lambda s: s.started_at)
    assert [s.id for s in sessions] == [ids.session_id(ch, carol["id"], "l0"), ids.session_id(ch, carol["id"], "p2")]
    assert [s.message_count for s in sessions] == [4, 1]
    assert {m.session_id for m in msgs} == {s.id for s in sessions}


def test_lid_only_chat_resolves_to_known_phone_contact(store: CrmStore, importer: Importer) -> None:
    """A lid chat whose lid a stored phone contact already carries never creates a second contact."""
    ch = importer.channel_id
    dave = phone_contact("4915550004", lid="888", name="Dave")
    store.commit_chunk(importer.batch([dave], [message(ch, dave, "d1", T0)]))
    ghost = lid_contact("888")
    store.commit_chunk(importer.batch([ghost], [message(ch, ghost, "d2", T0 + MIN)], chunk=1))
    assert [c.id for c in _rows(store, schema.contacts)] == [dave["id"]]
    assert {m.contact_id for m in _rows(store, schema.messages)} == {dave["id"]}
    assert len(_rows(store, schema.sessions)) == 1


def test_a_message_stored_under_another_contact_stays_there_and_the_rest_is_inserted(
    store: CrmStore, importer: Importer
) -> None:
    """The chunk's rows are checked against its own contacts' stored messages only; one already stored under a
    contact outside the chunk makes the plain INSERT fail, and the savepoint retry keeps the stored row."""
    ch = importer.channel_id
    gina, hank = phone_contact("4915550007"), phone_contact("4915550008")
    store.commit_chunk(importer.batch([gina], [message(ch, gina, "g1", T0)]))
    result = store.commit_chunk(importer.batch(
        [hank], [message(ch, hank, "g1", T0), message(ch, hank, "h1", T0 + MIN), message(ch, hank, "h2", T0 + 2 * MIN)],
        chunk=1,
    ))

    assert result.messages_inserted == 2 and result.messages_total == 3
    owners = {m.external_id: m.contact_id for m in _rows(store, schema.messages)}
    assert owners == {"g1": gina["id"], "h1": hank["id"], "h2": hank["id"]}
    sessions = {s.contact_id: s.message_count for s in _rows(store, schema.sessions)}
    assert sessions == {gina["id"]: 1, hank["id"]: 2}


def test_later_import_never_nulls_name_or_lid(store: CrmStore, importer: Importer) -> None:
    ch = importer.channel_id
    eve = phone_contact("4915550005", lid="999", name="Eve")
    store.commit_chunk(importer.batch([eve], [message(ch, eve, "e1", T0)]))
    store.commit_chunk(importer.batch([phone_contact("4915550005")], [message(ch, eve, "e2", T0 + MIN)]))
    (contact,) = _rows(store, schema.contacts)
    assert (contact.name, contact.lid) == ("Eve", "999")
    store.commit_chunk(importer.batch([phone_contact("4915550005", name="Eve B.")], [message(ch, eve, "e3", T0)]))
    assert _rows(store, schema.contacts)[0].name == "Eve B."


def test_sessions_recomputed_over_stored_and_new_messages(store: CrmStore, importer: Importer) -> None:
    """Two batches whose messages interleave give the sessions one batch with everything gives (SPEC 6.7)."""
    ch = importer.channel_id
    frank = phone_contact("4915550006")
    times = [0, 20, 40, 100, 110, 200, 229, 230, 260, 400]
    msgs = [message(ch, frank, f"f{i:02d}", T0 + t * MIN, from_me=i % 3 == 0) for i, t in enumerate(times)]

    store.commit_chunk(importer.batch([frank], msgs[0::2]))
    store.commit_chunk(importer.batch([frank], msgs[1::2]))
    split = snapshot(store)

    with store.engine.begin() as conn:  # start over, then import everything at once
        for table in (schema.messages, schema.sessions, schema.contacts):
            conn.execute(sa.delete(table))
    store.commit_chunk(importer.batch([frank], msgs))
    assert snapshot(store) == split
    assert len(split["sessions"]) == 4  # gaps > 30 min: 40->100, 110->200, 260->400


def test_statuses_follow_latest_plan_time(store: CrmStore, importer: Importer) -> None:
    ch = importer.channel_id
    gina = phone_contact("4915550007")
    recent = PLAN_TIME - 10 * MIN
    store.commit_chunk(importer.batch([gina], [message(ch, gina, "g1", T0), message(ch, gina, "g2", recent)]))
    statuses = {s.started_at: s.status for s in _rows(store, schema.sessions)}
    assert sorted(statuses.values()) == ["closed", "open"]

    later = PLAN_TIME + 3600  # a later plan: the recent session is now past the timeout
    hank = phone_contact("4915550008")
    store.commit_chunk(importer.batch([hank], [message(ch, hank, "h1", later - MIN)], plan_time=later, chunk=1))
    by_contact = {(s.contact_id, s.status) for s in _rows(store, schema.sessions)}
    assert by_contact == {(gina["id"], "closed"), (hank["id"], "open")}


def test_recording_a_plan_sets_every_status_without_any_commit(store: CrmStore, importer: Importer) -> None:
    """A re-plan that leaves every chat out as up to date still moves statuses to its plan_time (SPEC 6.4)."""
    ch = importer.channel_id
    ivy = phone_contact("4915550009")
    store.commit_chunk(importer.batch([ivy], [message(ch, ivy, "i1", PLAN_TIME - 10 * MIN)]))
    assert [s.status for s in _rows(store, schema.sessions)] == ["open"]
    importer.plan(plan_time=PLAN_TIME + 3600, chunks=0)
    assert [s.status for s in _rows(store, schema.sessions)] == ["closed"]
    importer.plan(plan_time=PLAN_TIME + 7200, timeout=24 * 60, chunks=0)  # and to its timeout
    assert [s.status for s in _rows(store, schema.sessions)] == ["open"]


def test_rejects_are_idempotent(store: CrmStore, importer: Importer) -> None:
    ch = importer.channel_id
    alice = phone_contact("4915550001")
    rejects = [reject(ch, "4915550001@c.us", None, "no id"), reject(ch, "4915550001@c.us", "x1", "bad timestamp")]
    for _ in range(2):
        store.commit_chunk(importer.batch([alice], [message(ch, alice, "m1", T0)], rejects=rejects + rejects[:1]))
    rows = _rows(store, schema.message_rejects)
    assert len(rows) == 2
    assert {r.external_id for r in rows} == {None, "x1"}


@pytest.mark.parametrize("sent_at", [0, 1, 1_700_000_000, 1_700_000_001, 2_147_483_648, 4_102_444_800])
def test_sent_at_round_trips_exactly(store: CrmStore, importer: Importer, sent_at: int) -> None:
    ch = importer.channel_id
    alice = phone_contact("4915550001")
    store.commit_chunk(importer.batch([alice], [message(ch, alice, "m1", sent_at)]))
    (row,) = _rows(store, schema.messages)
    assert row.sent_at == dt.datetime.fromtimestamp(sent_at, dt.UTC)
    assert row.sent_at.utcoffset() == dt.timedelta(0)
    stored = store.stored_messages(ch, [alice["id"]])
    assert stored["sent_at"].tolist() == [sent_at]
    assert stored.columns.tolist() == ["contact_id", "external_id", "sent_at", "from_me"]


def test_commit_requires_the_chunk_in_the_ledger(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", T0)], record=False)
    with pytest.raises(Exception, match="not in the ledger"):
        store.commit_chunk(batch)
    assert store.counts(importer.channel_id)["messages"] == 0
