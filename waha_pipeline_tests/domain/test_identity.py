"""Pins contact resolution within a plan (SPEC 6.3): a @c.us chat and its mapped @lid chats are ONE contact,
lid-only and group contacts, no contact without messages, and the name rules (just-the-number -> push name of
the latest inbound message -> NULL)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest

from waha_pipeline.domain import ids
from waha_pipeline.domain.batch import CONTACT_COLUMNS, MESSAGE_COLUMNS
from waha_pipeline.domain.identity import is_just_the_number, resolve_contacts
from waha_pipeline.domain.planning import PlannedChat

# ---------------------------------------------------------------------------------------------------------------
# FIXTURES

TENANT = "t-42"
MARIA = PlannedChat("5511@c.us", "direct", "Maria Souza", phone="5511", lid="10")
MARIA_LID = PlannedChat("10@lid", "lid", "Mari", phone="5511", lid="10")
LID_ONLY = PlannedChat("77@lid", "lid", None, phone=None, lid="77")
NUMBER_NAME = PlannedChat("5522@c.us", "direct", "+55 (22) 1234-5678", phone="5522", lid=None)
GROUP = PlannedChat("1203@g.us", "group", "Equipe", phone=None, lid=None, group_id="1203@g.us")


def messages(*rows: tuple[str, str, int, bool, str | None]) -> pd.DataFrame:
    """rows: (chat_id, external_id, sent_at, from_me, push_name)."""
    frame = pd.DataFrame(
        {
            "id": [ids.message_id("ch", r[1]) for r in rows],
            "contact_id": [None] * len(rows),
            "chat_id": [r[0] for r in rows],
            "external_id": [r[1] for r in rows],
            "from_me": [r[3] for r in rows],
            "sent_at": [r[2] for r in rows],
            "content_type": ["text"] * len(rows),
            "body": ["x"] * len(rows),
            "sender_id": [None] * len(rows),
            "push_name": [r[4] for r in rows],
        }
    )
    return frame.astype({**MESSAGE_COLUMNS, "push_name": "string"})


def contacts_by_id(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {r["id"]: {k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict("records")}


# ---------------------------------------------------------------------------------------------------------------
# TESTS

NUMBER_CASES = [
    ("5511912345678", True),
    ("+55 (11) 91234-5678", True),
    ("", True),
    (None, True),
    ("   ", True),
    ("Maria", False),
    ("Maria 2", False),
    ("+55 11 9123 ext", False),
    ("5511.9123", False),
    ("٥٥١١", False),  # non-ASCII digits are not a phone number we would store
]


@pytest.mark.parametrize(("name", "expected"), NUMBER_CASES, ids=[repr(c[0]) for c in NUMBER_CASES])
def test_is_just_the_number(name: str | None, expected: bool) -> None:
    assert is_just_the_number(name) is expected


def test_lid_chat_mapped_to_phone_merges_with_the_phone_chat() -> None:
    msgs = messages(("5511@c.us", "a", 10, False, None), ("10@lid", "b", 20, False, None))
    contacts, out = resolve_contacts([MARIA, MARIA_LID], msgs, tenant_id=TENANT)
    expected_id = ids.contact_id(TENANT, phone="5511")
    assert contacts_by_id(contacts) == {
        expected_id: {"id": expected_id, "phone": "5511", "lid": "10", "group_id": None, "name": "Maria Souza"}
    }
    assert out["contact_id"].tolist() == [expected_id, expected_id]
    assert list(contacts.columns) == list(CONTACT_COLUMNS)


def test_lid_chat_alone_still_carries_the_mapped_phone() -> None:
    contacts, out = resolve_contacts([MARIA, MARIA_LID], messages(("10@lid", "b", 20, False, None)), tenant_id=TENANT)
    (contact,) = contacts_by_id(contacts).values()
    assert (contact["phone"], contact["lid"]) == ("5511", "10")
    assert contact["name"] == "Maria Souza", "the @c.us chat's name wins even when only the @lid chat has messages"


def test_lid_only_contact() -> None:
    contacts, out = resolve_contacts([LID_ONLY], messages(("77@lid", "c", 5, False, "Zé")), tenant_id=TENANT)
    cid = ids.contact_id(TENANT, lid="77")
    assert contacts_by_id(contacts)[cid] == {"id": cid, "phone": None, "lid": "77", "group_id": None, "name": "Zé"}
    assert out["contact_id"].tolist() == [cid]


def test_group_contact_is_never_named_after_a_participant() -> None:
    unnamed = PlannedChat("1203@g.us", "group", None, phone=None, lid=None, group_id="1203@g.us")
    msgs = messages(("1203@g.us", "g1", 5, False, "Participant"))
    for chat, name in ((GROUP, "Equipe"), (unnamed, None)):
        contacts, _ = resolve_contacts([chat], msgs, tenant_id=TENANT)
        (contact,) = contacts_by_id(contacts).values()
        assert contact == {"id": ids.contact_id(TENANT, group_id="1203@g.us"), "phone": None, "lid": None,
                           "group_id": "1203@g.us", "name": name}


def test_no_contact_without_messages() -> None:
    contacts, out = resolve_contacts(
        [MARIA, MARIA_LID, LID_ONLY, GROUP], messages(("77@lid", "c", 5, False, None)), tenant_id=TENANT
    )
    assert contacts["id"].tolist() == [ids.contact_id(TENANT, lid="77")]
    contacts, out = resolve_contacts([MARIA, LID_ONLY], messages(), tenant_id=TENANT)
    assert contacts.empty and list(contacts.columns) == list(CONTACT_COLUMNS) and out.empty


NAME_CASES = [
    (
        "real chat name",
        [PlannedChat("5533@c.us", "direct", "Ana", phone="5533", lid=None)],
        [("5533@c.us", "a", 1, False, "Push")],
        "Ana",
    ),
    (
        "number name falls back to latest inbound push name",
        [NUMBER_NAME],
        [("5522@c.us", "a", 1, False, "Old"), ("5522@c.us", "b", 3, False, "New"), ("5522@c.us", "c", 2, False, "Mid")],
        "New",
    ),
    (
        "outbound messages never name the contact",
        [NUMBER_NAME],
        [("5522@c.us", "a", 1, False, "Inbound"), ("5522@c.us", "b", 9, True, "Agent")],
        "Inbound",
    ),
    (
        "equal times ordered by external id",
        [NUMBER_NAME],
        [("5522@c.us", "b", 5, False, "B"), ("5522@c.us", "a", 5, False, "A")],
        "B",
    ),
    (
        "latest inbound without push name is skipped",
        [NUMBER_NAME],
        [("5522@c.us", "a", 1, False, "Known"), ("5522@c.us", "b", 2, False, None)],
        "Known",
    ),
    ("nothing known", [NUMBER_NAME], [("5522@c.us", "a", 1, True, None)], None),
    (
        "@c.us name preferred over @lid name",
        [MARIA_LID, MARIA],
        [("10@lid", "a", 1, False, None)],
        "Maria Souza",
    ),
    (
        "@lid name when the @c.us name is just the number",
        [PlannedChat("5511@c.us", "direct", "5511", phone="5511", lid="10"), MARIA_LID],
        [("5511@c.us", "a", 1, False, "Push")],
        "Mari",
    ),
    (
        "push name across both chats of the contact",
        [PlannedChat("5511@c.us", "direct", None, phone="5511", lid="10"),
         PlannedChat("10@lid", "lid", None, phone="5511", lid="10")],
        [("5511@c.us", "a", 1, False, "FromCus"), ("10@lid", "b", 2, False, "FromLid")],
        "FromLid",
    ),
]


@pytest.mark.parametrize(("chats", "rows", "name"), [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_contact_name(chats: list[PlannedChat], rows: list[tuple], name: str | None) -> None:
    contacts, _ = resolve_contacts(chats, messages(*rows), tenant_id=TENANT)
    (contact,) = contacts_by_id(contacts).values()
    assert contact["name"] == name


def test_message_of_a_chat_outside_the_chunk_is_an_error() -> None:
    with pytest.raises(ValueError, match="not in the chunk"):
        resolve_contacts([MARIA], messages(("5599@c.us", "a", 1, False, None)), tenant_id=TENANT)


def test_contact_ids_depend_on_tenant() -> None:
    msgs = messages(("5511@c.us", "a", 10, False, None))
    a, _ = resolve_contacts([MARIA], msgs, tenant_id="t1")
    b, _ = resolve_contacts([MARIA], msgs, tenant_id="t2")
    assert a["id"].tolist() != b["id"].tolist()


def test_peers_outside_are_the_plans_other_chats_of_a_joined_contact() -> None:
    """A lid whose phone only messages reveal joins a lid chat of one chunk to the phone's chat of another."""
    from waha_pipeline.domain.identity import chat_name, peers_outside, with_learned_phones

    direct = PlannedChat("5511900000001@c.us", "direct", "Ana Souza", phone="5511900000001", lid=None)
    lid_chat = PlannedChat("900001@lid", "lid", "Aninha", phone=None, lid="900001")
    plan = {c.chat_id: c for c in (direct, lid_chat)}
    learned = {"900001": "5511900000001"}
    lid_chunk = with_learned_phones((lid_chat,), learned)
    assert lid_chunk == (dataclasses.replace(lid_chat, phone="5511900000001"),)
    assert with_learned_phones((direct,), learned) == (dataclasses.replace(direct, lid="900001"),)
    assert peers_outside(lid_chunk, plan, learned) == (direct,)
    assert peers_outside((direct,), plan, learned) == (dataclasses.replace(lid_chat, phone="5511900000001"),)
    assert peers_outside((direct,), plan, {}) == ()
    assert chat_name([*lid_chunk, *peers_outside(lid_chunk, plan, learned)]) == "Ana Souza"  # the @c.us name wins
