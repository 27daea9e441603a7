"""The bulk load keeps every value exactly: NULL apart from "", quotes, separators, newlines, backslashes, COPY's
end-of-data marker and wide Unicode (PostgreSQL reads Arrow-written CSV; SQLite takes plain parameters)."""

from __future__ import annotations

import uuid

import pandas as pd
import sqlalchemy as sa

from waha_pipeline.crm import temp_tables
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain.batch import conform

BODIES = [None, "", " ", '"', '""', "a,b", "line\nbreak", "cr\r\nlf", "\\.", "\\N", "back\\slash", "\t", "NULL",
          "ção🌸✨中文€", "x" * 70_000]


def test_every_value_comes_back_exactly(store: CrmStore) -> None:
    n = len(BODIES)
    frame = conform(pd.DataFrame({
        "id": [str(uuid.uuid4()) for _ in range(n)],
        "contact_id": [None, *(str(uuid.uuid4()) for _ in range(n - 1))],
        "chat_id": ["5511@c.us"] * n,
        "external_id": [f"e{k}" for k in range(n)],
        "from_me": [k % 2 == 0 for k in range(n)],
        "sent_at": [1_700_000_000 + k for k in range(n)],
        "body": BODIES,
    }), {"id": "string", "contact_id": "string", "chat_id": "string", "external_id": "string", "from_me": "bool",
         "sent_at": "int64", "body": "string"})
    with store.engine.begin() as conn:
        temp_tables.create(conn)
        assert temp_tables.load(conn, temp_tables.temp_messages, frame) == n
        rows = conn.execute(sa.select(temp_tables.temp_messages).order_by(temp_tables.temp_messages.c.external_id)).all()
        temp_tables.drop(conn)
    by_id = {r.external_id: r for r in rows}
    for k, body in enumerate(BODIES):
        row = by_id[f"e{k}"]
        assert row.body == body, (k, body)
        assert (row.from_me, row.sent_at, row.session_id, row.push_name) == (k % 2 == 0, 1_700_000_000 + k, None, None)
        contact = frame["contact_id"][k]
        assert (None if row.contact_id is None else str(row.contact_id)) == (None if pd.isna(contact) else contact)
