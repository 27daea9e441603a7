"""Pins sessionization (SPEC 6.4): agreement with a plain loop reference on random inputs (equal timestamps,
gaps of exactly the timeout and timeout+1), convergence of any split into several imports to one import of
everything, count and gap invariants, deterministic ids, open/closed status and empty-input dtypes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import SESSION_COLUMNS
from waha_pipeline.domain.sessions import assign_sessions, session_status

# ---------------------------------------------------------------------------------------------------------------
# FIXTURES

CH = "channel-1"
PLAN_TIME = 2_000_000


@dataclass(frozen=True)
class Row:
    contact_id: str
    external_id: str
    sent_at: int
    from_me: bool


def frame(rows: list[Row], index: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": pd.array([r.contact_id for r in rows], dtype="string"),
            "external_id": pd.array([r.external_id for r in rows], dtype="string"),
            "sent_at": np.array([r.sent_at for r in rows], dtype=np.int64),
            "from_me": np.array([r.from_me for r in rows], dtype=bool),
        },
        index=index,
    )


def reference(rows: list[Row], timeout_minutes: int, plan_time: int) -> tuple[dict[str, str], list[dict]]:
    """The rule written plainly: per contact, sort by (sent_at, external_id); a gap > timeout opens a session."""
    by_contact: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_contact[row.contact_id].append(row)
    session_of: dict[str, str] = {}
    sessions: list[dict] = []
    for contact, msgs in by_contact.items():
        msgs.sort(key=lambda r: (r.sent_at, r.external_id))
        current: dict | None = None
        previous = None
        for row in msgs:
            if current is None or row.sent_at - previous > timeout_minutes * 60:
                current = {
                    "id": ids.session_id(CH, contact, row.external_id), "contact_id": contact,
                    "started_at": row.sent_at, "ended_at": row.sent_at, "message_count": 0,
                    "messages_from_contact": 0, "messages_from_agent": 0,
                }
                sessions.append(current)
            current["ended_at"] = row.sent_at
            current["message_count"] += 1
            current["messages_from_agent" if row.from_me else "messages_from_contact"] += 1
            previous = row.sent_at
            session_of[row.external_id] = current["id"]
    for s in sessions:
        s["status"] = "closed" if s["ended_at"] < plan_time - timeout_minutes * 60 else "open"
    return session_of, sessions


def as_records(sessions: pd.DataFrame) -> list[dict]:
    return sorted(sessions.to_dict("records"), key=lambda s: s["id"])


def per_message(rows: list[Row], session_ids: pd.Series) -> dict[str, str]:
    return {row.external_id: sid for row, sid in zip(rows, session_ids.tolist(), strict=True)}


# Random histories: a few contacts, gaps chosen to hit equal timestamps and the timeout edges exactly.
@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Row], int]:
    timeout = draw(st.sampled_from([0, 1, 30]))
    edge = timeout * 60
    gap = st.sampled_from([0, 0, 1, edge, edge, edge + 1, edge + 1, edge * 3 + 7, 86_400])
    n = draw(st.integers(0, 40))
    external_ids = draw(st.lists(st.sampled_from("abcdefghij").flatmap(
        lambda p: st.integers(0, 300).map(lambda i: f"{p}{i}")), min_size=n, max_size=n, unique=True))
    clock: dict[str, int] = {}
    rows = []
    for external_id in external_ids:
        contact = draw(st.sampled_from(["c1", "c2", "c3"]))
        clock[contact] = clock.get(contact, draw(st.integers(PLAN_TIME - 5000, PLAN_TIME))) + draw(gap)
        rows.append(Row(contact, external_id, clock[contact], draw(st.booleans())))
    rows = draw(st.permutations(rows))
    return rows, timeout


# ---------------------------------------------------------------------------------------------------------------
# TESTS: properties


@settings(max_examples=100, deadline=None)
@given(histories())
def test_property_agrees_with_reference(case: tuple[list[Row], int]) -> None:
    rows, timeout = case
    index = [1000 - i * 7 for i in range(len(rows))]  # a non-default index: results must align to it
    session_ids, sessions = assign_sessions(frame(rows, index), channel_id=CH, timeout_minutes=timeout, plan_time=PLAN_TIME)
    expected_of, expected = reference(rows, timeout, PLAN_TIME)
    assert session_ids.index.tolist() == index
    assert per_message(rows, session_ids) == expected_of
    assert as_records(sessions) == sorted(expected, key=lambda s: s["id"])


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_property_any_split_into_imports_converges(case: tuple[list[Row], int], data: st.DataObject) -> None:
    rows, timeout = case
    _, one_shot = assign_sessions(frame(rows), channel_id=CH, timeout_minutes=timeout, plan_time=PLAN_TIME)
    imports = data.draw(st.lists(st.integers(0, 3), min_size=len(rows), max_size=len(rows)))
    stored: list[Row] = []
    store_sessions: dict[str, dict] = {}
    message_session: dict[str, str] = {}
    for k in range(4):
        new = [r for r, i in zip(rows, imports, strict=True) if i == k]
        affected = {r.contact_id for r in new}
        union = [r for r in stored if r.contact_id in affected] + new  # "stored + new" of the affected contacts
        session_ids, sessions = assign_sessions(frame(union), channel_id=CH, timeout_minutes=timeout, plan_time=PLAN_TIME)
        # The store replaces the affected contacts' sessions with the recomputed set.
        store_sessions = {sid: s for sid, s in store_sessions.items() if s["contact_id"] not in affected}
        store_sessions.update({s["id"]: s for s in sessions.to_dict("records")})
        message_session.update(per_message(union, session_ids))
        stored += new
    assert sorted(store_sessions.values(), key=lambda s: s["id"]) == as_records(one_shot)
    one_shot_ids, _ = assign_sessions(frame(rows), channel_id=CH, timeout_minutes=timeout, plan_time=PLAN_TIME)
    assert message_session == per_message(rows, one_shot_ids)


@settings(max_examples=60, deadline=None)
@given(histories())
def test_property_counts_and_gaps(case: tuple[list[Row], int]) -> None:
    rows, timeout = case
    session_ids, sessions = assign_sessions(frame(rows), channel_id=CH, timeout_minutes=timeout, plan_time=PLAN_TIME)
    assert sessions["message_count"].sum() == len(rows)
    assert (sessions["messages_from_contact"] + sessions["messages_from_agent"] == sessions["message_count"]).all()
    members: dict[str, list[int]] = defaultdict(list)
    for row, sid in zip(rows, session_ids.tolist(), strict=True):
        members[sid].append(row.sent_at)
    for sid, times in members.items():
        times.sort()
        assert all(b - a <= timeout * 60 for a, b in zip(times, times[1:])), "gap inside a session > timeout"
    for _, per_contact in sessions.sort_values("started_at").groupby("contact_id"):
        starts, ends = per_contact["started_at"].tolist(), per_contact["ended_at"].tolist()
        assert all(s - e > timeout * 60 for e, s in zip(ends, starts[1:])), "consecutive sessions too close"


# ---------------------------------------------------------------------------------------------------------------
# TESTS: tables

GAP_CASES = [("gap == timeout stays", 1800, 1), ("gap == timeout + 1 splits", 1801, 2), ("equal times", 0, 1)]


@pytest.mark.parametrize(("gap", "sessions_expected"), [c[1:] for c in GAP_CASES], ids=[c[0] for c in GAP_CASES])
def test_gap_edges(gap: int, sessions_expected: int) -> None:
    rows = [Row("c", "m1", 1000, False), Row("c", "m2", 1000 + gap, True)]
    _, sessions = assign_sessions(frame(rows), channel_id=CH, timeout_minutes=30, plan_time=PLAN_TIME)
    assert len(sessions) == sessions_expected


def test_session_row_values() -> None:
    rows = [Row("c", "m2", 100, True), Row("c", "m1", 100, False), Row("c", "m3", 200, False), Row("d", "x", 50, False)]
    session_ids, sessions = assign_sessions(frame(rows), channel_id=CH, timeout_minutes=30, plan_time=PLAN_TIME)
    first = ids.session_id(CH, "c", "m1")  # equal times: ordered by external id, so m1 starts the session
    assert session_ids.tolist()[:3] == [first] * 3
    row = sessions.set_index("id").loc[first]
    assert (row["contact_id"], row["started_at"], row["ended_at"]) == ("c", 100, 200)
    assert (row["message_count"], row["messages_from_contact"], row["messages_from_agent"]) == (3, 2, 1)
    assert row["status"] == "closed"


STATUS_CASES = [
    ("ended long ago", PLAN_TIME - 1801, "closed"),
    ("ended exactly timeout ago", PLAN_TIME - 1800, "open"),
    ("ended recently", PLAN_TIME - 5, "open"),
]


@pytest.mark.parametrize(("ended_at", "status"), [c[1:] for c in STATUS_CASES], ids=[c[0] for c in STATUS_CASES])
def test_status(ended_at: int, status: str) -> None:
    assert session_status(ended_at, plan_time=PLAN_TIME, timeout_minutes=30) == status
    series = session_status(pd.Series([ended_at], index=[7]), plan_time=PLAN_TIME, timeout_minutes=30)
    assert series.tolist() == [status] and series.index.tolist() == [7]
    _, sessions = assign_sessions(frame([Row("c", "m", ended_at, False)]), channel_id=CH, timeout_minutes=30,
                                  plan_time=PLAN_TIME)
    assert sessions["status"].tolist() == [status]


def test_ids_depend_on_channel_and_contact() -> None:
    rows = [Row("c", "m", 1, False)]
    a = assign_sessions(frame(rows), channel_id="ch-a", timeout_minutes=30, plan_time=PLAN_TIME)[0].iloc[0]
    b = assign_sessions(frame(rows), channel_id="ch-b", timeout_minutes=30, plan_time=PLAN_TIME)[0].iloc[0]
    assert a != b and a == ids.session_id("ch-a", "c", "m")


def test_empty_input() -> None:
    session_ids, sessions = assign_sessions(frame([]), channel_id=CH, timeout_minutes=30, plan_time=PLAN_TIME)
    assert session_ids.empty and str(session_ids.dtype) == "string"
    assert list(sessions.columns) == list(SESSION_COLUMNS)
    assert dict(sessions.dtypes.astype(str)) == SESSION_COLUMNS


def test_output_dtypes() -> None:
    _, sessions = assign_sessions(frame([Row("c", "m", 1, False)]), channel_id=CH, timeout_minutes=30, plan_time=PLAN_TIME)
    assert dict(sessions.dtypes.astype(str)) == SESSION_COLUMNS
