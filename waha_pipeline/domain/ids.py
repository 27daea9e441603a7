"""Deterministic ids: the same input always yields the same row id, so re-runs converge (SPEC 6.7)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

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


def message_ids(channel_id: str, external_ids: Iterable[str]) -> list[str]:
    """`message_id` for many messages at once (same values), for chunks of a million rows."""
    prefix = "\x1f".join(("message", channel_id, ""))
    return _uuids(prefix + e for e in external_ids)


def session_ids(channel_id: str, contact_ids: Iterable[str], first_external_ids: Iterable[str]) -> list[str]:
    """`session_id` for many sessions at once (same values)."""
    prefix = "\x1f".join(("session", channel_id, ""))
    return _uuids(f"{prefix}{c}\x1f{e}" for c, e in zip(contact_ids, first_external_ids, strict=True))


_VARIANT = {f"{i:x}": f"{(i & 0x3) | 0x8:x}" for i in range(16)}


def _uuids(names: Iterable[str]) -> list[str]:
    """uuid5 strings built from the sha1 hex digest without a UUID object per row (about 3x faster).

    uuid5 = sha1(namespace + name)[:16] with the version nibble set to 5 and the variant bits to 10xx.
    """
    namespace = _NAMESPACE.bytes
    sha1 = hashlib.sha1
    variant = _VARIANT
    out: list[str] = []
    append = out.append
    for name in names:
        x = sha1(namespace + name.encode("utf-8")).hexdigest()
        append(f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{variant[x[16]]}{x[17:20]}-{x[20:32]}")
    return out
