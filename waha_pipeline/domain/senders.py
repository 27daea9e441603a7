"""Who sent a group message, and the phone of an `@lid` contact carried inside a message (SPEC 6.2, 6.3, 6.5).

Pure functions over one raw WAHA message; chat ids go through `chat_ids.normalize_chat_id`, which also drops
a device suffix (`123:12@lid`, `5511...:7@s.whatsapp.net`).
"""

from __future__ import annotations

from typing import Any

from waha_pipeline.domain.chat_ids import normalize_chat_id


def group_sender(msg: dict[str, Any]) -> str | None:
    """The participant who sent a group message, normalized; None when no field names one.

    Fields, first usable wins: `participant` (all engines, current), `author` (documented for groups),
    `_data.author` (older WEBJS: the sender only in the raw message, a string or `{_serialized}`),
    `_data.key.participant` (NOWEB, Baileys key), `_data.Info.Sender` (GOWS, whatsmeow, may carry a device).
    """
    sender = normalize_chat_id(msg.get("participant")) or normalize_chat_id(msg.get("author"))
    if sender is not None:
        return sender
    data = msg.get("_data")
    if type(data) is not dict:
        return None
    sender = normalize_chat_id(data.get("author"))
    if sender is not None:
        return sender
    key = data.get("key")
    if type(key) is dict:
        sender = normalize_chat_id(key.get("participant"))
        if sender is not None:
            return sender
    info = data.get("Info")
    return normalize_chat_id(info.get("Sender")) if type(info) is dict else None


def _pair(a: Any, b: Any) -> tuple[str, str] | None:
    """(lid digits, phone digits) when one of the two ids is an `@lid` and the other a phone id, else None."""
    a, b = normalize_chat_id(a), normalize_chat_id(b)
    if a is None or b is None:
        return None
    a_user, _, a_server = a.partition("@")
    b_user, _, b_server = b.partition("@")
    if not (a_user.isascii() and a_user.isdigit() and b_user.isascii() and b_user.isdigit()):
        return None
    if a_server == "lid" and b_server == "c.us":
        return a_user, b_user
    if a_server == "c.us" and b_server == "lid":
        return b_user, a_user
    return None


def _candidates(data: dict[str, Any], is_group: bool, from_me: bool) -> list[tuple[Any, Any]]:
    """Id pairs naming one person twice (an id and its alternative), by engine.

    GOWS (whatsmeow `MessageSource`): `SenderAlt` is the sender's other address, `RecipientAlt` the
    recipient's in DMs sent by the account, so a DM pairs `Info.Chat` with `SenderAlt` when received and with
    `RecipientAlt` when sent; a group pairs `Info.Sender` with `SenderAlt` on received messages.
    NOWEB (Baileys key): v7 `remoteJidAlt` / `participantAlt`, 6.7 `senderPn` / `senderLid` /
    `participantPn` / `participantLid`. Only received messages are read: on the account's own messages the
    sender-side alternative may be the account's own address.
    """
    pairs: list[tuple[Any, Any]] = []
    info = data.get("Info")
    if type(info) is dict:
        if is_group:
            if not from_me:
                pairs.append((info.get("Sender"), info.get("SenderAlt")))
        else:
            pairs.append((info.get("Chat"), info.get("RecipientAlt" if from_me else "SenderAlt")))
    key = data.get("key")
    if type(key) is dict and not from_me:
        if is_group:
            participant = key.get("participant")
            for alt in ("participantAlt", "participantPn", "participantLid"):
                pairs.append((participant, key.get(alt)))
        else:
            remote = key.get("remoteJid")
            for alt in ("remoteJidAlt", "senderPn", "senderLid"):
                pairs.append((remote, key.get(alt)))
    return pairs


def lid_phone(msg: dict[str, Any], chat_id: str, *, is_group: bool, from_me: bool) -> tuple[str, str] | None:
    """(lid digits, phone digits) this message proves, or None.

    In a 1:1 chat the pair must name the chat queried (its `@lid` or its phone), so a pair about someone else
    (the account itself) never maps the chat's contact; in a group the pair is the sender's.
    """
    data = msg.get("_data")
    if type(data) is not dict:
        return None
    for a, b in _candidates(data, is_group, from_me):
        if a is None or b is None:
            continue
        pair = _pair(a, b)
        if pair is None:
            continue
        if is_group or chat_id in (f"{pair[0]}@lid", f"{pair[1]}@c.us"):
            return pair
    return None
