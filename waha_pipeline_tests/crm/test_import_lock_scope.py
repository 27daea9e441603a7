"""The import lock belongs to one CRM database: two CRMs on one PostgreSQL server (two tenants' databases, two
test runs) whose channels share a slug neither block nor report each other."""

from __future__ import annotations

import pytest

from waha_pipeline.crm import ledger
from waha_pipeline.crm.migrate import upgrade
from waha_pipeline.crm.store import CrmStore, ImportRunning
from waha_pipeline_tests.conftest import temporary_pg_database

pytestmark = pytest.mark.postgres


def test_a_lock_in_another_database_is_neither_reported_nor_in_the_way() -> None:
    with temporary_pg_database("waha_lock_a") as url_a, temporary_pg_database("waha_lock_b") as url_b:
        upgrade(url_a)
        upgrade(url_b)
        a, b = CrmStore.from_url(url_a), CrmStore.from_url(url_b)
        try:
            with a.import_lock("demo-1a2b3c"):
                assert b.import_lock_holder("demo-1a2b3c") is None
                assert a.import_lock_holder("demo-1a2b3c") is not None  # its own database sees it
                with b.import_lock("demo-1a2b3c"):
                    assert b.import_lock_holder("demo-1a2b3c") is not None
        finally:
            for store in (a, b):
                store.dispose()


def test_within_one_database_a_holder_elsewhere_refuses_the_lock() -> None:
    """The holder is a bare connection holding the advisory lock, as another process's import would."""
    with temporary_pg_database("waha_lock_c") as url:
        upgrade(url)
        store = CrmStore.from_url(url)
        try:
            conn = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                assert ledger.try_import_lock(conn, "demo-1a2b3c")
                with pytest.raises(ImportRunning, match="is being imported by"):
                    with store.import_lock("demo-1a2b3c"):
                        pass
            finally:
                conn.close()
        finally:
            store.dispose()
