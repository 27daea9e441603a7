"""One-off timing of commit_chunk (not a test): `python bench/bench_commit.py [N] [CONTACTS]`.

Creates a throwaway PostgreSQL database from WAHA_TEST_PG_ADMIN_URL, commits one chunk of N messages over
CONTACTS contacts, then commits it again (the idempotent re-run), and prints both times.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers below live in the repository, not the package

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline_tests.crm.conftest import PLAN_TIME, TENANT, Importer


def main(n: int = 100_000, n_contacts: int = 50, step: int = 7, drop_fks: str = "") -> None:
    from waha_pipeline.crm.migrate import upgrade
    from waha_pipeline_tests.conftest import temporary_pg_database as tmp_db

    with tmp_db("waha_bench_crm") as url:
        upgrade(url)
        if drop_fks:
            import sqlalchemy as sa

            e = sa.create_engine(url)
            with e.begin() as c:
                for fk in drop_fks.split(","):
                    c.execute(sa.text(f"ALTER TABLE messages DROP CONSTRAINT {fk}"))
            e.dispose()
        store = CrmStore.from_url(url)
        importer = Importer(store)
        ch = importer.channel_id
        phones = [f"49155{k:07d}" for k in range(n_contacts)]
        contacts = [{"id": ids.contact_id(TENANT, phone=p), "phone": p, "lid": None, "group_id": None, "name": None}
                    for p in phones]  # fmt: skip
        k = pd.Series(range(n))
        external = "wamid." + k.astype(str)
        messages = pd.DataFrame(
            {
                "id": [ids.message_id(ch, e) for e in external],
                "contact_id": [contacts[i % n_contacts]["id"] for i in range(n)],
                "chat_id": [f"{phones[i % n_contacts]}@c.us" for i in range(n)],
                "external_id": external,
                "from_me": (k % 3 == 0),
                "sent_at": PLAN_TIME - 180 * 86400 + k * step,  # per-contact gap = step * n_contacts seconds
                "content_type": "text",
                "body": "a message body of about fifty-five characters, roughly.",
                "sender_id": None,
                "push_name": None,
            }
        )
        batch = importer.batch([], [])
        batch.contacts = pd.DataFrame(contacts)
        batch.messages = messages
        for label in ("first commit", "re-run (all conflicts)"):
            start = time.perf_counter()
            result = store.commit_chunk(batch)
            print(f"{label}: {n} messages, {n_contacts} contacts: {time.perf_counter() - start:.2f} s -> {result}")
        store.dispose()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
