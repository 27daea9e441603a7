"""End to end over the corpus of WAHA message payloads (SPEC 6.5, 6.8; docs/engines.md).

`waha_pipeline_tests/data/waha_corpus.json` holds message objects as GOWS, NOWEB and WEBJS serve them from
`GET /api/{session}/chats/{chatId}/messages`, each with its source and its expected outcome: a `messages` row with
the given time, direction, type, body and sender; a `message_rejects` row; or neither (skipped, with a reason).
Every payload is served verbatim by the simulator over HTTP in a chat of its own id, one import runs through the
CLI into PostgreSQL, and every entry is checked. A failure lists every entry whose outcome differs, not the first.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from waha_pipeline.simulator import DatasetSpec, run_in_thread
from waha_pipeline_tests.crm_state import query
from waha_pipeline_tests.e2e.cli_run import cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "waha_corpus.json"
SESSION = "demo"
# The smallest dataset the simulator builds: only the injected chats are asserted on.
SPEC = DatasetSpec(seed=31, chats=16, target_messages=40)
SKIP_REASONS = ("reaction", "poll_vote", "protocol", "system_notice", "after_plan_time")


def load_corpus() -> list[dict[str, Any]]:
    return json.loads(CORPUS_PATH.read_text(encoding="utf-8"))


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def served_payload(entry: dict[str, Any], future_stamp: int) -> dict[str, Any]:
    """The payload as served: entries stamped at fetch time get a stamp after the plan time (`now + 1 day`)."""
    payload = copy.deepcopy(entry["payload"])
    if entry["expect"].get("rewrite_time"):
        payload["timestamp"] = future_stamp
        data = payload.get("_data")
        if isinstance(data, dict) and "messageTimestamp" in data:
            data["messageTimestamp"] = future_stamp
    return payload


def chunk_skip_counts(url: str) -> dict[str, int] | None:
    """Per-reason skipped counts summed over the latest plan's chunks, from `import_chunks.skipped`;
    None while the ledger does not record them."""
    columns = {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns("import_chunks")}
    if "skipped" not in columns:
        return None
    rows = query(url, """
        select c.skipped from import_chunks c
        where c.plan_id = (select id from import_plans order by plan_time desc, created_at desc limit 1)""")
    total: Counter[str] = Counter()
    for (skipped,) in rows:
        value = json.loads(skipped) if isinstance(skipped, str) else (skipped or {})
        total.update({k: int(v) for k, v in value.items() if isinstance(v, int)})
    return dict(total)


def _same_body(want: str | None, got: str | None) -> bool:
    """An empty body and no body are the same outcome."""
    return (want or None) == (got or None)


def outcome_mismatches(entry: dict[str, Any], row: dict[str, Any] | None, reject: dict[str, Any] | None,
                       phone: str | None) -> list[str]:
    """What differs between an entry's expected outcome and what the CRM holds for it (empty = as expected)."""
    want = entry["expect"]
    got_kind = "message" if row else "rejected" if reject else "skipped"
    if want["outcome"] != got_kind:
        detail = row or reject or {}
        return [f"outcome: expected {want['outcome']}, got {got_kind} {detail}"]
    problems = []
    if got_kind == "message":
        assert row is not None
        for field in ("sent_at", "from_me", "content_type", "sender_id"):
            if row[field] != want.get(field):
                problems.append(f"{field}: expected {want.get(field)!r}, got {row[field]!r}")
        if not _same_body(want.get("body"), row["body"]):
            problems.append(f"body: expected {want.get('body')!r:.80}, got {row['body']!r:.80}")
        if want.get("phone") and phone != want["phone"]:
            problems.append(f"contact phone: expected {want['phone']!r}, got {phone!r}")
    elif got_kind == "rejected":
        assert reject is not None
        if want["reason_contains"] not in (reject["reason"] or ""):
            problems.append(f"reject reason: expected to contain {want['reason_contains']!r}, got {reject['reason']!r}")
    return problems


def test_every_corpus_payload_ends_in_its_expected_outcome(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    corpus = load_corpus()
    assert len(corpus) >= 40 and {e["engine"] for e in corpus} == {"GOWS", "NOWEB", "WEBJS"}
    future_stamp = int(time.time()) + 86400  # after any plan time of this test
    chats = sorted({e["chat_id"] for e in corpus})
    for n, chat_id in enumerate(chats):
        sim.state.add_chat(SESSION, chat_id, f"Corpus {n}")
    for entry in corpus:
        sim.state.serve_raw(SESSION, entry["chat_id"], served_payload(entry, future_stamp), order_ts=entry["order_ts"])

    code, out, err = cli(capsys, "import", SESSION, "--days", "0", "--include-groups", "--chunk-size", "500")
    assert "Traceback (most recent call last)" not in out + err, (out + err)[-3000:]

    rows = {
        r.external_id: {"chat_id": r.chat_id, "sent_at": int(r.sent_at.timestamp()), "from_me": r.from_me,
                        "content_type": r.content_type, "body": r.body, "sender_id": r.sender_id,
                        "phone": r.phone}
        for r in query(url, """
            select m.external_id, m.chat_id, m.sent_at, m.from_me, m.content_type, m.body, m.sender_id, c.phone
            from messages m left join contacts c on c.id = m.contact_id
            where m.chat_id = any(:chats)""", chats=chats)
    }
    rejects = {r.external_id: {"chat_id": r.chat_id, "reason": r.reason}
               for r in query(url, "select external_id, chat_id, reason from message_rejects where chat_id = any(:chats)",
                              chats=chats)}

    failures = []
    for entry in corpus:
        ext = entry["payload"].get("id")
        row, reject = rows.get(ext), rejects.get(ext)
        phone = row.pop("phone") if row else None
        problems = outcome_mismatches(entry, row, reject, phone)
        if problems:
            failures.append(f"{entry['name']} ({entry['engine']} {entry['kind']}): " + "; ".join(problems))

    expected_ids = {e["payload"].get("id") for e in corpus}
    strays = sorted(set(rows) - expected_ids) + sorted(set(rejects) - expected_ids)
    if strays:
        failures.append(f"rows for ids that are not in the corpus: {strays}")

    counts = chunk_skip_counts(url)
    if counts is not None:
        want = Counter(e["expect"]["reason"] for e in corpus if e["expect"]["outcome"] == "skipped")
        got = {reason: counts.get(reason, 0) for reason in SKIP_REASONS}
        if got != {reason: want.get(reason, 0) for reason in SKIP_REASONS}:
            failures.append(f"chunk skipped counts: expected {dict(want)}, got {counts}")

    summary = f"import exit code {code}; {len(failures)} of {len(corpus)} entries differ"
    assert code == 0 and not failures, summary + ":\n" + "\n".join(failures) + ("\n" + (out + err)[-2000:] if code else "")
