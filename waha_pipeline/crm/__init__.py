"""The CRM database: schema and migrations, the per-chunk transaction (`CrmStore.commit_chunk`) and the ledger.

Depends on `domain/` and `errors.py` only; knows nothing about WAHA or Dagster.
"""
