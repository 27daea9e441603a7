"""Pins the boundary parsing of WAHA payloads: sessions across engines, lid mappings, chat and message ids as a
string or an object with `_serialized`."""

from __future__ import annotations

from typing import Any

import pytest

from waha_pipeline.waha.models import LidMapping, SessionInfo, chat_id_of, message_id_of, parse_lid_mapping, parse_session

FULL_SESSION = {
    "name": "acme-sales",
    "status": "WORKING",
    "config": {"metadata": {"tenant_id": "t-42"}, "debug": False},
    "me": {"id": "5511987654321@c.us", "lid": "140012345678901@lid", "pushName": "Acme Sales"},
    "engine": {"engine": "GOWS"},
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (FULL_SESSION, SessionInfo("acme-sales", "WORKING", "t-42", "5511987654321@c.us", "Acme Sales", "GOWS")),
        ({"name": "s", "status": "SCAN_QR_CODE", "config": None, "me": None}, SessionInfo("s", "SCAN_QR_CODE", None, None, None, None)),
        ({"name": "s", "status": "WORKING", "engine": "NOWEB", "me": {"id": {"_serialized": "1@c.us"}}}, SessionInfo("s", "WORKING", None, "1@c.us", None, "NOWEB")),
        ({"name": "s", "status": "STOPPED", "config": {"metadata": {"tenant": "legacy-key"}}}, SessionInfo("s", "STOPPED", None, None, None, None)),
        ({"name": "s", "status": "WORKING", "config": {"metadata": {"tenant_id": 42}}}, SessionInfo("s", "WORKING", "42", None, None, None)),
        ({"name": "s", "status": "WORKING", "config": {"metadata": {"tenant_id": ""}}}, SessionInfo("s", "WORKING", None, None, None, None)),
    ],
    ids=["full-gows", "not-authenticated", "object-me-id-string-engine", "tenant-under-other-key", "numeric-tenant", "empty-tenant"],
)
def test_parse_session(raw: dict[str, Any], expected: SessionInfo) -> None:
    assert parse_session(raw) == expected


@pytest.mark.parametrize("raw", [None, [], {"status": "WORKING"}, {"name": "s"}, {"name": "", "status": "WORKING"}], ids=["none", "list", "no-name", "no-status", "empty-name"])
def test_parse_session_rejects(raw: Any) -> None:
    with pytest.raises(ValueError):
        parse_session(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"lid": "203949586712345@lid", "pn": "5511912345678@c.us"}, LidMapping("203949586712345", "5511912345678")),
        ({"lid": "203949586712345@lid", "pn": None}, LidMapping("203949586712345", None)),
        ({"lid": "203949586712345@lid"}, LidMapping("203949586712345", None)),
        ({"lid": "203949586712345", "pn": "5511912345678@s.whatsapp.net"}, LidMapping("203949586712345", "5511912345678")),
        ({"lid": "203949586712345@lid", "pn": "5511912345678:7@s.whatsapp.net"}, LidMapping("203949586712345", "5511912345678")),
        ({"lid": "203949586712345@lid", "pn": "not a number@c.us"}, LidMapping("203949586712345", None)),
        ({"lid": None, "pn": "5511912345678@c.us"}, None),
        ({"lid": "abc@lid", "pn": "5511912345678@c.us"}, None),
        ("203949586712345@lid", None),
    ],
    ids=["mapped", "pn-null", "pn-missing", "bare-digits-swa", "device-suffix", "bad-pn", "no-lid", "bad-lid", "not-object"],
)
def test_parse_lid_mapping(raw: Any, expected: LidMapping | None) -> None:
    assert parse_lid_mapping(raw) == expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "1@c.us"}, "1@c.us"),
        ({"id": {"server": "c.us", "user": "1", "_serialized": "1@c.us"}}, "1@c.us"),
        ({"id": {"server": "c.us", "user": "1"}}, None),
        ({"id": ""}, None),
        ({"id": 12}, None),
        ({"name": "no id"}, None),
        ("1@c.us", None),
    ],
    ids=["string", "object", "object-without-serialized", "empty", "number", "missing", "not-object"],
)
def test_chat_and_message_ids(item: Any, expected: str | None) -> None:
    assert chat_id_of(item) == expected
    assert message_id_of(item) == expected
