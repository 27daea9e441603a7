"""Deterministic ids: the same input always yields the same row id, so re-runs converge (SPEC 6.7)."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6b1f8a52-2d0e-5c57-9a0e-0c6f1b2d7a11")


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def channel_id(tenant_id: str, waha_session: str) -> str:
    return _uuid("channel", tenant_id, waha_session)


def contact_id(tenant_id: str, *, phone: str | None = None, lid: str | None = None, group_id: str | None = None) -> str:
    """A contact is keyed by its strongest identity: phone, else lid, else group id."""
    if phone:
        return _uuid("contact", tenant_id, "phone", phone)
    if lid:
        return _uuid("contact", tenant_id, "lid", lid)
    if group_id:
        return _uuid("contact", tenant_id, "group", group_id)
    raise ValueError("a contact needs a phone, a lid or a group id")


def message_id(channel_id: str, external_id: str) -> str:
    return _uuid("message", channel_id, external_id)


def session_id(channel_id: str, contact_id: str, first_external_id: str) -> str:
    return _uuid("session", channel_id, contact_id, first_external_id)


def reject_id(channel_id: str, chat_id: str, key: str) -> str:
    """`key` is the external id, or a digest of the raw payload when the message had none."""
    return _uuid("reject", channel_id, chat_id, key)


def plan_id(channel_id: str, plan_time: int) -> str:
    return _uuid("plan", channel_id, str(plan_time))
