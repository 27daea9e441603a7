"""End to end with bad input (issue 3, "Survive a flaky WAHA": the bad-input check; SPEC 3, 4, 6.2, 6.8).

A non-JSON 200 body, chats whose id is of no known kind, enormous message bodies, malformed messages and invalid
configuration each end in the documented outcome (chunk failure with a one-line reason, skip counted in the
plan, byte-exact import, reject rows, exit 2) and never lose a good row. Real PostgreSQL, the simulator over
HTTP, the CLI in process; every bad item is injected through the simulator, which also computes the truth.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from waha_pipeline.simulator import DatasetSpec, Faults, run_in_thread
from waha_pipeline.simulator.models import DIRECT
from waha_pipeline_tests.crm_state import assert_matches, latest_plan, query, snapshot
from waha_pipeline_tests.e2e.cli_run import cli, expected

SPEC = DatasetSpec(seed=23, chats=120, target_messages=600)


@pytest.fixture
def sim(anchor: int) -> Iterator[Any]:
    """A simulator of its own: each test injects data or faults into it."""
    with run_in_thread(SPEC, anchor=anchor) as handle:
        yield handle


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback (most recent call last)" not in text, text[-3000:]


def text_template(sim: Any, chat_kind: str = DIRECT) -> tuple[Any, dict]:
    """(chat, raw) of a good text message in a chat of `chat_kind`: a realistic payload to copy."""
    sess = sim.state.dataset.sessions["demo"]
    for chat in sess.chats:
        if chat.kind != chat_kind:
            continue
        for e in chat.entries:
            if e.blob is not None and e.defect is None and e.content_type == "text" and not e.from_me:
                return chat, e.raw()
    raise AssertionError("the dataset has no inbound text message in a direct chat")


def make_raw(template: dict, chat_id: str, external_id: str, ts: int, body: str | None) -> dict:
    """A copy of `template` re-addressed to `chat_id` with its own id, time and text body."""
    raw = copy.deepcopy(template)
    raw["id"] = external_id
    raw["timestamp"] = ts
    raw["from"] = chat_id
    raw["body"] = body
    raw["_data"]["Message"] = {"conversation": body}
    return raw


# ------------------------------------------------------------------------------------------ non-JSON 200 body

def test_non_json_200_body_fails_its_chunks_with_a_reason_then_rerun_is_exact(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    sim.set_faults(Faults(garbage_rate=0.05, only_kinds=("messages",)))
    code, out, err = cli(capsys, "import", "demo", "--days", "0", "--chunk-size", "10")
    assert code == 1, out + err
    assert sim.stats()["faults"]["garbage"] > 0
    no_traceback(out, err)
    plan = latest_plan(url)
    failed = [c for c in plan["chunks"] if c["status"] == "failed"]
    committed = [c for c in plan["chunks"] if c["status"] == "committed"]
    assert failed and committed, [c["status"] for c in plan["chunks"]]
    for chunk in failed:
        reason = chunk["last_error"] or ""
        assert "not JSON" in reason and "\n" not in reason.strip(), (chunk["key"], reason)
        assert chunk["key"] in out + err, "the failed chunk keys are printed"
    # committed chunks are exact, chat by chat; failed ones left nothing
    want = expected(sim, url)
    state = snapshot(url)
    for chunk in plan["chunks"]:
        chats = set(chunk["chat_ids"])
        got = {m for m in state["messages"] if m[1] in chats}
        if chunk["status"] == "committed":
            assert got == {m for m in want["messages"] if m[1] in chats}, chunk["key"]
            assert {r for r in state["rejects"] if r[0] in chats} == {r for r in want["rejects"] if r[0] in chats}
        else:
            assert not got, f"failed chunk {chunk['key']} left rows"

    sim.clear_faults()
    code, out, err = cli(capsys, "rerun-failed", "demo")
    assert code == 0, out + err
    assert all(c["status"] == "committed" for c in latest_plan(url)["chunks"])
    assert_matches(snapshot(url), expected(sim, url))


# ------------------------------------------------------------------------------------- unknown chat-id kinds

UNKNOWN_IDS = ("12345@weird.server", "abc@c.us", "55119x876@lid")


def test_chats_of_unknown_kind_are_skipped_with_a_reason_and_counted(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    _, template = text_template(sim)
    for n, raw_id in enumerate(UNKNOWN_IDS):
        sim.add_chat("demo", raw_id, name=f"Weird {n}")
        for k in range(3):
            sim.add_message("demo", raw_id, make_raw(template, raw_id, f"false_{raw_id}_INJ{n}{k}",
                                                     sim.anchor - 3600 * (k + 1), f"hello {k}"))
    code, out, err = cli(capsys, "import", "demo", "--days", "0")
    assert code == 0, out + err
    no_traceback(out, err)
    skipped = query(url, "select skipped from import_plans order by plan_time desc, created_at desc limit 1")[0][0]
    assert skipped.get("unknown") == len(UNKNOWN_IDS), skipped
    stored_chats = {r[0] for r in query(url, "select distinct chat_id from messages")}
    stored_chats |= {r[0] for r in query(url, "select distinct chat_id from message_rejects")}
    assert not stored_chats & set(UNKNOWN_IDS)
    fetched = sim.stats()["messages_by_chat"]
    assert not set(fetched) & set(UNKNOWN_IDS), "a skipped chat must not even be fetched"
    assert_matches(snapshot(url), expected(sim, url))


# ----------------------------------------------------------------------------------------- enormous bodies

def test_enormous_message_bodies_are_stored_byte_exactly(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    chat, template = text_template(sim)
    last = max(e.ts for e in chat.entries)
    huge = "".join(f"linha {i:07d}: Boa tarde, vocês entregam em Campinas?\n" for i in range(100_000))
    assert len(huge.encode()) > 5_000_000
    wide = "ção🌸✨中文€" * 150_000  # 2-, 3- and 4-byte UTF-8 characters, ~3.3 MB
    bodies = {"3EB0BADINPUTHUGE": huge, "3EB0BADINPUTWIDE": wide}
    for n, (suffix, body) in enumerate(bodies.items()):
        sim.add_message("demo", chat.id, make_raw(template, chat.id, f"false_{chat.id}_{suffix}", last - n, body))

    code, out, err = cli(capsys, "import", "demo", "--days", "0")
    assert code == 0, out + err
    no_traceback(out, err)
    for suffix, body in bodies.items():
        rows = query(url, "select body, octet_length(body), content_type from messages where external_id = :e",
                     e=f"false_{chat.id}_{suffix}")
        assert len(rows) == 1, suffix
        stored, octets, ctype = rows[0]
        assert octets == len(body.encode()) and stored == body and ctype == "text", suffix
    assert_matches(snapshot(url), expected(sim, url))


# ------------------------------------------------------------------------------------------ malformed messages

def test_malformed_messages_of_every_kind_are_rejected_and_good_rows_kept(env, sim, capsys) -> None:
    url = env["DATABASE_URL"]
    chat, template = text_template(sim)
    cid = chat.id
    base = max(e.ts for e in chat.entries) - 600

    def raw(tag: str, k: int, **patch: Any) -> dict:
        r = make_raw(template, cid, f"false_{cid}_3EB0BAD{tag.upper()}", base + k, f"injected {tag}")
        if "timestamp" in patch:  # a bad `timestamp` is looked past to `_data`'s time (SPEC 6.5): leave it none
            r["_data"]["Info"].pop("Timestamp", None)
        for key, value in patch.items():
            if value is ...:
                del r[key]
            else:
                r[key] = value
        return r

    bad = {  # defect -> (payload, timestamp the simulator files it under)
        "missing_id": raw("a", 1, id=...),
        "missing_timestamp": raw("b", 2, timestamp=...),
        "string_timestamp": raw("c", 3, timestamp="ontem às 14:05"),
        "fromme_not_bool": raw("d", 4, fromMe="false"),
        "missing_fromme": raw("e", 5, fromMe=...),
        "id_not_string": raw("f", 6, id=12345),
        "body_not_string": raw("g", 7, body={"text": "oi"}),
        "negative_timestamp": raw("h", 8, timestamp=-5),
        "bool_timestamp": raw("i", 9, timestamp=True),
    }
    for k, (defect, payload) in enumerate(bad.items()):
        sim.add_message("demo", cid, payload, defect=defect, ts=base + 1 + k, from_me=False)
    goods = [raw(f"ok{k}", 20 + k) for k in range(3)]
    for payload in goods:
        sim.add_message("demo", cid, payload)

    code, out, err = cli(capsys, "import", "demo", "--days", "0")
    assert code == 0, out + err
    no_traceback(out, err)
    want_all = sim.truth("demo", window_end=latest_plan(url)["window_end"])
    want_chat = [r for r in want_all["rejects"] if r["chat_id"] == cid]
    rows = query(url, "select external_id, reason, payload from message_rejects where chat_id = :c", c=cid)
    assert len(rows) == len(want_chat) >= len(bad), (rows, want_chat)
    assert all(reason and reason.strip() and payload for _, reason, payload in rows)
    stored_ids = {r[0] for r in query(url, "select external_id from messages where chat_id = :c", c=cid)}
    assert {e.external_id for e in chat.entries if e.blob is not None and e.defect is None} <= stored_ids
    assert {p["id"] for p in goods} <= stored_ids
    first = snapshot(url)
    assert_matches(first, expected(sim, url))

    code, out, err = cli(capsys, "import", "demo", "--days", "0")
    assert code == 0, out + err
    again = snapshot(url)
    assert again["ids"]["rejects"] == first["ids"]["rejects"], "a re-import must not add a second reject row"
    assert again["ids"]["messages"] == first["ids"]["messages"]


# ---------------------------------------------------------------------------------------- invalid configuration

CONFIG_CASES = {
    "ftp_base_url": ({"WAHA_BASE_URL": "ftp://x"}, (), "WAHA_BASE_URL"),
    "mysql_database_url": ({"DATABASE_URL": "mysql://user:pw@127.0.0.1:3306/crm"}, (), "DATABASE_URL"),
    "negative_concurrency": ({"WAHA_CONCURRENCY": "-3"}, (), "WAHA_CONCURRENCY"),
    "zero_workers": ({"IMPORT_WORKERS": "0"}, (), "IMPORT_WORKERS"),
    "chunk_size_501": ({}, ("--chunk-size", "501"), "--chunk-size"),
    "unknown_channel": ({}, (), "nosuchchannel"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_invalid_configuration_exits_2_with_one_line_and_writes_nothing(
        case: str, env, sim, capsys, monkeypatch) -> None:
    overrides, flags, named = CONFIG_CASES[case]
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    channel = "nosuchchannel" if case == "unknown_channel" else "demo"
    code, out, err = cli(capsys, "import", channel, "--days", "0", *flags)
    assert code == 2, (case, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], (case, err)
    no_traceback(out, err)
    tables = sa.inspect(sa.create_engine(env["DATABASE_URL"])).get_table_names()
    assert tables == [], f"{case}: nothing may be written, found tables {tables}"
    assert sim.stats()["messages"] == 0


@pytest.mark.parametrize("wrong", ["database", "port"])
def test_an_unreachable_crm_exits_2_with_one_line_and_no_secret(wrong: str, env, sim, capsys, monkeypatch) -> None:
    """A wrong database name or port is a configuration error: one line naming DATABASE_URL, exit 2, the password
    nowhere, nothing written to the real database."""
    url = sa.make_url(env["DATABASE_URL"]).set(password="s3cret-pw")
    url = url.set(database="waha_no_such_db") if wrong == "database" else url.set(port=1)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    code, out, err = cli(capsys, "import", "demo", "--days", "0")
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], err
    assert "s3cret-pw" not in out + err
    no_traceback(out, err)
    assert sa.inspect(sa.create_engine(env["DATABASE_URL"])).get_table_names() == []
