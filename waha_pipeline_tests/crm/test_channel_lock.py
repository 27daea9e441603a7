"""Commits of one channel take turns (ledger.lock_channel), so chunk workers of one channel cannot interleave
their session re-splits and status updates. PostgreSQL only: SQLite serializes every writer by itself."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from waha_pipeline.crm import ledger
from waha_pipeline.crm.store import CrmStore
from waha_pipeline_tests.crm.conftest import PLAN_TIME, Importer, message, phone_contact


def advisory_waiters(store: CrmStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and wait_event_type = 'Lock' and wait_event = 'advisory'"
        )).scalar_one()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_commit_waits_while_its_channel_is_locked(store: CrmStore, importer: Importer) -> None:
    alice = phone_contact("4915550001", name="Alice")
    batch = importer.batch([alice], [message(importer.channel_id, alice, "m1", PLAN_TIME - 3600)])
    done = threading.Event()

    def commit() -> None:
        store.commit_chunk(batch)
        done.set()

    committer = threading.Thread(target=commit, daemon=True)
    with store.engine.connect() as holder, holder.begin():
        ledger.lock_channel(holder, importer.channel_id)
        committer.start()
        deadline = time.monotonic() + 10
        while advisory_waiters(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert advisory_waiters(store) == 1 and not done.is_set()
    committer.join(timeout=10)
    assert done.is_set()
    assert store.counts(importer.channel_id)["messages"] == 1
