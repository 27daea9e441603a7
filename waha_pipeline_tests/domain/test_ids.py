"""Pins that the bulk id builders give exactly the scalar uuid5 ids (rows written by either path must match)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waha_pipeline.domain import ids


@given(st.text(min_size=1), st.lists(st.text(), max_size=20))
def test_message_ids_match_message_id(channel: str, external_ids: list[str]) -> None:
    assert ids.message_ids(channel, external_ids) == [ids.message_id(channel, e) for e in external_ids]


@given(st.text(min_size=1), st.lists(st.tuples(st.text(), st.text()), max_size=20))
def test_session_ids_match_session_id(channel: str, pairs: list[tuple[str, str]]) -> None:
    contacts, firsts = [c for c, _ in pairs], [f for _, f in pairs]
    assert ids.session_ids(channel, contacts, firsts) == [ids.session_id(channel, c, f) for c, f in pairs]
