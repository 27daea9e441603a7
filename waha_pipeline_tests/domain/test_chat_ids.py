"""Pins chat id normalization (string and WEBJS object ids, s.whatsapp.net -> c.us) and classification (SPEC 6.2)."""

from __future__ import annotations

import pytest

from waha_pipeline.domain.chat_ids import (
    IMPORTABLE_KINDS,
    ChatKind,
    classify_chat_id,
    is_importable,
    normalize_chat_id,
    user_part,
)

# ---------------------------------------------------------------------------------------------------------------
# TESTS

NORMALIZE_CASES = [
    ("5511912345678@c.us", "5511912345678@c.us"),
    ("  5511912345678@c.us \n", "5511912345678@c.us"),
    ("5511912345678@s.whatsapp.net", "5511912345678@c.us"),
    ("5511912345678:7@s.whatsapp.net", "5511912345678@c.us"),
    ("5511912345678@S.WhatsApp.Net", "5511912345678@c.us"),
    ("203949586712345@lid", "203949586712345@lid"),
    ("203949586712345:3@lid", "203949586712345@lid"),
    ("120363041234567890@g.us", "120363041234567890@g.us"),
    ("5511987654321-1600000000@g.us", "5511987654321-1600000000@g.us"),
    ("status@broadcast", "status@broadcast"),
    ({"server": "c.us", "user": "5511912345678", "_serialized": "5511912345678@c.us"}, "5511912345678@c.us"),
    ({"_serialized": "120363041234567890@g.us"}, "120363041234567890@g.us"),
    ({"server": "lid", "user": "203949586712345"}, "203949586712345@lid"),
    (None, None),
    ("", None),
    ("   ", None),
    ("5511912345678", None),
    ("@c.us", None),
    ("5511@", None),
    (12345, None),
    ({"user": "5511"}, None),
    ({"_serialized": None}, None),
    (["5511@c.us"], None),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_CASES, ids=[repr(c[0])[:40] for c in NORMALIZE_CASES])
def test_normalize_chat_id(raw: object, expected: str | None) -> None:
    assert normalize_chat_id(raw) == expected


CLASSIFY_CASES = [
    ("5511912345678@c.us", ChatKind.DIRECT),
    ("5511912345678@s.whatsapp.net", ChatKind.DIRECT),
    ("203949586712345@lid", ChatKind.LID),
    ("120363041234567890@g.us", ChatKind.GROUP),
    ("status@broadcast", ChatKind.STATUS),
    ("1234567890@broadcast", ChatKind.BROADCAST),
    ("120363100000000000@newsletter", ChatKind.NEWSLETTER),
    ("5511@example.com", ChatKind.UNKNOWN),
    ("maria@c.us", ChatKind.UNKNOWN),
    ("abc@lid", ChatKind.UNKNOWN),
    ("@g.us", ChatKind.UNKNOWN),
]


@pytest.mark.parametrize(("chat_id", "kind"), CLASSIFY_CASES, ids=[c[0] for c in CLASSIFY_CASES])
def test_classify_chat_id(chat_id: str, kind: ChatKind) -> None:
    assert classify_chat_id(chat_id) is kind


def test_user_part() -> None:
    assert user_part("5511912345678@c.us") == "5511912345678"
    assert user_part("203949586712345@lid") == "203949586712345"


IMPORTABLE_CASES = [
    (ChatKind.DIRECT, False, True),
    (ChatKind.LID, False, True),
    (ChatKind.GROUP, False, False),
    (ChatKind.GROUP, True, True),
    (ChatKind.STATUS, True, False),
    (ChatKind.BROADCAST, True, False),
    (ChatKind.NEWSLETTER, True, False),
    (ChatKind.UNKNOWN, True, False),
]


@pytest.mark.parametrize(
    ("kind", "include_groups", "expected"), IMPORTABLE_CASES, ids=[f"{k}-groups={g}" for k, g, _ in IMPORTABLE_CASES]
)
def test_is_importable(kind: ChatKind, include_groups: bool, expected: bool) -> None:
    assert is_importable(kind, include_groups=include_groups) is expected
    assert is_importable(kind.value, include_groups=include_groups) is expected


def test_importable_kinds_are_the_one_to_one_chats() -> None:
    assert IMPORTABLE_KINDS == {ChatKind.DIRECT, ChatKind.LID}
