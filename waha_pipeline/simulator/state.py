"""Mutable server-side state of one simulator: dataset, live session statuses, api key, stats and faults.

Why a separate object: the test thread and the server's event loop share it (status changes, stats reads),
so the pieces that both touch are guarded by one lock and kept small.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import orjson

from waha_pipeline.simulator.faults import FAULT_COUNTERS, Decider, Faults
from waha_pipeline.simulator.generator import grow_session
from waha_pipeline.simulator.models import (
    CONTENT_TYPES, INJECTED, Dataset, DatasetSpec, SimChat, SimSession, StoredMessage, chat_listed,
)

SESSION_STATUSES = ("STOPPED", "STARTING", "SCAN_QR_CODE", "PASSKEY_REQUIRED", "PASSKEY_CONFIRMATION_REQUIRED",
                    "WORKING", "FAILED")
STAT_KINDS = ("sessions", "chats", "messages", "lids", "other")


class Stats:
    """Request counters (WAHA API only; /_sim control calls are counted apart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.by_kind = dict.fromkeys(STAT_KINDS, 0)
            self.by_status: dict[int, int] = {}
            self.messages_by_chat: dict[str, int] = {}
            self.control = 0
            self.in_flight = 0  # being served (past the max_concurrent gate)
            self.max_in_flight = 0
            self.waiting = 0  # queued at the max_concurrent gate
            self.max_waiting = 0
            self.faults = dict.fromkeys(FAULT_COUNTERS, 0)

    def begin(self, kind: str) -> None:
        """A WAHA request arrived and is served at once (no concurrency cap)."""
        with self._lock:
            self.by_kind[kind] += 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight

    def end(self, status: int | None) -> None:
        """The request ended with `status`; None: no HTTP response at all (an injected reset)."""
        with self._lock:
            self.in_flight -= 1
            if status is not None:
                self.by_status[status] = self.by_status.get(status, 0) + 1

    def arrive(self, kind: str) -> None:
        """A WAHA request arrived and waits at the max_concurrent gate; `admit` follows."""
        with self._lock:
            self.by_kind[kind] += 1
            self.waiting += 1
            if self.waiting > self.max_waiting:
                self.max_waiting = self.waiting

    def admit(self) -> None:
        with self._lock:
            self.waiting -= 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def count_chat(self, chat_id: str) -> None:
        with self._lock:
            self.messages_by_chat[chat_id] = self.messages_by_chat.get(chat_id, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.by_kind, "total": sum(self.by_kind.values()),
                    "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                    "messages_by_chat": dict(self.messages_by_chat), "control": self.control,
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "waiting": self.waiting, "max_waiting": self.max_waiting, "faults": dict(self.faults)}


class ChatIndex:
    """A session's chat list pre-sorted and pre-encoded once per sortBy, so /chats is a slice and a join.

    Per engine (waha_api.md 3.2): GOWS `{id, name, conversationTimestamp}`, default order id ascending; NOWEB
    stored Baileys chats with JID ids (`@s.whatsapp.net`), default order conversationTimestamp descending, and
    2024.10 lists only chats that have one (`chat_listed`); WEBJS whatsapp-web.js chats with id objects and
    `timestamp`, in WhatsApp Web's activity order unless sorted (`conversationTimestamp` maps to `timestamp`).
    """

    def __init__(self, chats: list[SimChat], spec: DatasetSpec | None = None) -> None:
        spec = spec or DatasetSpec()
        engine = spec.engine
        chats = [c for c in chats if chat_listed(c, spec)]
        self.default_sort = ("id", "asc") if engine == "gows" else ("conversationTimestamp", "desc")

        def wire(c: SimChat) -> dict:
            if engine == "gows":
                return {"id": c.wire_id, "name": c.name, "conversationTimestamp": c.conversation_timestamp}
            if engine == "noweb":
                jid = c.id.replace("@c.us", "@s.whatsapp.net")
                return {"id": jid, "name": c.name, "conversationTimestamp": c.listed_timestamp()}
            server = c.id.split("@", 1)[1] if "@" in c.id else ""
            return {"id": {"server": server, "user": c.id.split("@", 1)[0], "_serialized": c.id},
                    "name": c.name, "isGroup": server == "g.us", "isReadOnly": c.kind in ("newsletter", "broadcast"),
                    "unreadCount": 0, "timestamp": c.listed_timestamp(), "archived": False, "pinned": False,
                    "isMuted": False}

        encoded = {id(c): orjson.dumps(wire(c)) for c in chats}

        def blob(c: SimChat) -> bytes:
            return encoded[id(c)]

        def serial(c: SimChat) -> str:
            if engine == "noweb":
                return c.id.replace("@c.us", "@s.whatsapp.net")
            if engine == "webjs":
                return c.id
            return c.wire_id["_serialized"] if isinstance(c.wire_id, dict) else c.wire_id

        stamp = (lambda c: c.conversation_timestamp) if engine == "gows" else (lambda c: c.listed_timestamp())
        by_id = sorted(chats, key=serial)
        self.asc: dict[str, list[bytes]] = {"id": [blob(c) for c in by_id]}
        self.desc: dict[str, list[bytes]] = {"id": self.asc["id"][::-1]}
        values = {"name": lambda c: None if c.name is None else c.name.casefold(), "conversationTimestamp": stamp}
        for by, value in values.items():
            # nulls last in both orders; ties broken by id, so offset paging is consistent
            known = sorted((c for c in by_id if value(c) is not None), key=value)  # stable: id order kept
            nulls = [blob(c) for c in by_id if value(c) is None]
            self.asc[by] = [blob(c) for c in known] + nulls
            self.desc[by] = [blob(c) for c in reversed(known)] + nulls


@dataclass
class SimulatorState:
    """Everything one simulator serves from. Session lifecycle changes may be immediate or scheduled in
    "requests to that session" (any /api request whose path names it, whatever its outcome)."""

    dataset: Dataset
    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)
    stats: Stats = field(default_factory=Stats)
    statuses: dict[str, str] = field(default_factory=dict)
    chat_index: dict[str, ChatIndex] = field(default_factory=dict)
    engine: str = "GOWS"  # set from the dataset's engine profile
    version: str = "2026.7.1"
    deleted: set[str] = field(default_factory=set)  # sessions gone from WAHA (404 everywhere) until restored
    # session -> pending (due request number, action, argument); see tick()
    plans: dict[str, list[tuple[int, str, str | None]]] = field(default_factory=dict)
    session_requests: dict[str, int] = field(default_factory=dict)  # counted while a session has plans
    # session -> a condition checked before each request to it; the session is deleted once it holds
    delete_when: dict[str, Callable[[], bool]] = field(default_factory=dict)
    decider: Decider = field(init=False)
    listener: Any = field(default=None, repr=False)  # server.Listener when served by uvicorn (down/up)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        for name, sess in self.dataset.sessions.items():
            self.statuses.setdefault(name, sess.status)
            self.chat_index[name] = ChatIndex(sess.chats, self.dataset.spec)
        self.engine = self.dataset.spec.engine.upper()
        self.decider = Decider(self._fault_seed(self.faults))

    def session(self, name: str) -> SimSession | None:
        return self.dataset.sessions.get(name)

    # ---- injected data (bad-input tests): the facts the truth needs are given with the raw payload
    def add_chat(self, session: str, raw_id: str | dict, name: str | None = None) -> SimChat:
        """A chat with any id (a string or an id object), served by /chats and fetchable by that id string.
        Its kind is INJECTED: the truth skips it (counted under "injected"), like any non-importable chat."""
        sess = self._session_or_key_error(session)
        serial = raw_id.get("_serialized") if isinstance(raw_id, dict) else raw_id
        if not isinstance(serial, str):
            raise ValueError("raw_id must be a string or an object with a string _serialized")
        with self._lock:
            if serial in sess.chats_by_id:
                raise ValueError(f"chat {serial!r} already exists in session {session!r}")
            chat = SimChat(id=serial, kind=INJECTED, wire_id=raw_id, name=name)
            sess.chats.append(chat)
            sess.chats_by_id[serial] = chat
            self.chat_index[session] = ChatIndex(sess.chats, self.dataset.spec)
        return chat

    def add_message(self, session: str, chat_id: str, raw: dict, *, content_type: str = "text",
                    defect: str | None = None, ts: int | None = None, from_me: bool | None = None,
                    push_name: str | None = None) -> StoredMessage:
        """Serve `raw` (exactly, as JSON) in chat `chat_id`'s pages, ordered by its timestamp like the others.

        The truth facts: external id = raw "id" when it is a non-empty string; timestamp = `ts`, else raw
        "timestamp" (it must then be an int); direction = `from_me`, else raw "fromMe" (True or "true");
        body = raw "body"; push name (inbound only) = `push_name`, else raw _data.Info.PushName.
        A `defect` (any non-empty reason) makes it a reject in the truth; a good message must carry an id,
        an int timestamp and a bool fromMe.
        """
        sess = self._session_or_key_error(session)
        chat = sess.find_chat(chat_id)
        if chat is None:
            raise KeyError(f"no chat {chat_id!r} in session {session!r}")
        if not isinstance(raw, dict):
            raise ValueError("raw must be a JSON object")
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"content_type must be one of {', '.join(CONTENT_TYPES)}")
        if defect is not None and (not isinstance(defect, str) or not defect):
            raise ValueError("defect must be a non-empty reason or null")
        ext = raw.get("id")
        external_id = ext if isinstance(ext, str) and ext.strip() else None
        wire_ts = raw.get("timestamp")
        if ts is None:
            if isinstance(wire_ts, bool) or not isinstance(wire_ts, int):
                raise ValueError("give ts when the raw timestamp is not an integer")
            ts = wire_ts
        mine = from_me if from_me is not None else raw.get("fromMe") in (True, "true")
        if defect is None:
            if external_id is None or not isinstance(raw.get("fromMe"), bool) or wire_ts != ts:
                raise ValueError("a good message needs a string id, an int timestamp (= ts) and a bool fromMe; "
                                 "else give a defect")
            body = raw.get("body")
            if body is not None and not isinstance(body, str):
                raise ValueError("a good message's body must be a string or null")
        if push_name is None and not mine:
            info = (raw.get("_data") or {}).get("Info") if isinstance(raw.get("_data"), dict) else None
            pn = info.get("PushName") if isinstance(info, dict) else None
            push_name = (pn.strip() or None) if isinstance(pn, str) else None
        body = raw.get("body")
        with self._lock:
            seq = 1 + max((e.seq for c in sess.chats for e in c.entries), default=0)
            entry = StoredMessage(
                ts=int(ts), sort_id=external_id or "", seq=seq, from_me=bool(mine), blob=orjson.dumps(raw),
                external_id=external_id, body=body if isinstance(body, str) else None, content_type=content_type,
                push_name=None if mine else push_name, participant=raw.get("participant") if isinstance(
                    raw.get("participant"), str) else None, defect=defect)
            chat.entries.append(entry)
            chat.finalize()
            self.chat_index[session] = ChatIndex(sess.chats, self.dataset.spec)  # conversationTimestamp may have moved
        return entry

    def serve_raw(self, session: str, chat_id: str, raw: Any, *, order_ts: int) -> StoredMessage:
        """Serve `raw` (any JSON value, exactly as given) in chat `chat_id`'s pages at store position `order_ts`.

        For payloads taken verbatim from WAHA's material, whose expected outcome the caller knows: no truth facts
        are derived from them, so the chat should be one the truth skips (an `add_chat` chat).
        """
        sess = self._session_or_key_error(session)
        chat = sess.find_chat(chat_id)
        if chat is None:
            raise KeyError(f"no chat {chat_id!r} in session {session!r}")
        with self._lock:
            seq = 1 + max((e.seq for c in sess.chats for e in c.entries), default=0)
            ext = raw.get("id") if isinstance(raw, dict) else None
            from_me = raw.get("fromMe") is True if isinstance(raw, dict) else False
            entry = StoredMessage(
                ts=int(order_ts), sort_id=ext if isinstance(ext, str) else "", seq=seq, from_me=from_me,
                blob=orjson.dumps(raw), external_id=ext if isinstance(ext, str) else None, body=None,
                content_type="other", push_name=None, participant=None, defect=None)
            chat.entries.append(entry)
            chat.finalize()
            self.chat_index[session] = ChatIndex(sess.chats, self.dataset.spec)
        return entry

    # ---- growth (a channel that gains messages while the importer keeps it in step)
    def grow(self, session: str, *, new_messages: int = 0, new_chats: int = 0, late_messages: int = 0,
             at: int | None = None, seed: int = 0, into_chats: int | None = None,
             since: int | None = None) -> dict:
        """Generate more history with the dataset's own generator and engine profile; the truth includes it.

        - `new_messages` go to `into_chats` existing importable 1:1 chats (default: one per ~3 messages) whose
          chat-list time is exact; each chat's last new message is at `at` (default: now), the others a few
          seconds before, never before `since` (default `at`) nor the chat's newest message. The chat list's
          time moves to `at`, as WAHA's does when a message arrives.
        - `new_chats` new @c.us chats (importable, new phones, no lid mapping), 2-5 messages ending at `at`.
        - `late_messages` go inside existing chats' spans (strictly before each chat's newest message, never into
          a chat that got new messages): history WAHA syncs late. The chat list does not move, so an incremental
          import cannot see them.
        The dataset's anchor (the default truth window end) moves to `at` when it is later. Deterministic from
        the session's contents and the arguments. Call it on the serving loop (the /_sim route and
        SimulatorHandle.grow do) so no request sees a chat half-grown. Returns counts, chat ids and external ids.
        """
        sess = self._session_or_key_error(session)
        values = {"new_messages": new_messages, "new_chats": new_chats, "late_messages": late_messages}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
        for key, value in (("at", at), ("since", since), ("into_chats", into_chats)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{key} must be a non-negative integer or null")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an integer")
        at = int(time.time()) if at is None else at
        with self._lock:
            result = grow_session(self.dataset.spec, sess, new_messages=new_messages, into_chats=into_chats,
                                  new_chats=new_chats, late_messages=late_messages, at=at, since=since, seed=seed)
            self.chat_index[session] = ChatIndex(sess.chats, self.dataset.spec)
            self.dataset.anchor = max(self.dataset.anchor, at)
        return {"session": session, **result}

    def _session_or_key_error(self, name: str) -> SimSession:
        sess = self.dataset.sessions.get(name)
        if sess is None:
            raise KeyError(f"unknown simulated session {name!r}")
        return sess

    # ---- faults
    def _fault_seed(self, faults: Faults) -> int:
        return self.dataset.spec.seed if faults.seed is None else faults.seed

    def set_faults(self, faults: Faults) -> Faults:
        """Install `faults` and restart the draw counters, so the same request sequence replays the same faults."""
        faults.validate()
        with self._lock:
            self.decider = Decider(self._fault_seed(faults))
            self.faults = faults
        return faults

    # ---- session lifecycle
    def _known(self, name: str) -> None:
        if name not in self.dataset.sessions:
            raise KeyError(name)

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in SESSION_STATUSES:
            raise ValueError(f"unknown session status {status!r}; one of {', '.join(SESSION_STATUSES)}")

    def set_status(self, name: str, status: str) -> None:
        self._known(name)
        self._check_status(status)
        self.statuses[name] = status

    def schedule_status(self, name: str, status: str, after_requests: int = 0, for_requests: int | None = None) -> None:
        """`status` from request after_requests+1 to that session on; with for_requests=M, WORKING again after
        M requests in that status. after_requests=0 changes it now."""
        self._known(name)
        self._check_status(status)
        if after_requests < 0 or (for_requests is not None and for_requests < 0):
            raise ValueError("after_requests and for_requests must not be negative")
        with self._lock:
            now = self.session_requests.get(name, 0)
            if after_requests == 0:
                self.statuses[name] = status
            else:
                self._plan(name, now + after_requests + 1, "status", status)
            if for_requests is not None:
                self._plan(name, now + after_requests + for_requests + 1, "status", "WORKING")

    def delete_session(self, name: str, after_requests: int | None = None,
                       when: Callable[[], bool] | None = None) -> None:
        """The session disappears from WAHA now, from request after_requests+1 to it on, or from the first request
        to it at which `when()` holds (e.g. "once the importer has committed something": a point in the client's
        work that no request count marks)."""
        self._known(name)
        if after_requests is not None and after_requests < 0:
            raise ValueError("after_requests must not be negative")
        with self._lock:
            if when is not None:
                self.delete_when[name] = when
            elif not after_requests:
                self.deleted.add(name)
            else:
                self._plan(name, self.session_requests.get(name, 0) + after_requests + 1, "delete", None)

    def restore_session(self, name: str, status: str | None = None) -> None:
        """Undo a deletion (also a pending one); the status is what it was, or `status`."""
        self._known(name)
        if status is not None:
            self._check_status(status)
        with self._lock:
            self.deleted.discard(name)
            self.delete_when.pop(name, None)
            pending = [p for p in self.plans.get(name, []) if p[1] != "delete"]
            self._set_plans(name, pending)
            if status is not None:
                self.statuses[name] = status

    def cancel_schedules(self, name: str | None = None) -> None:
        with self._lock:
            for n in [name] if name is not None else list(self.plans):
                self._set_plans(n, [])
                self.delete_when.pop(n, None)

    def _plan(self, name: str, due: int, action: str, arg: str | None) -> None:
        self.session_requests.setdefault(name, 0)
        self._set_plans(name, sorted([*self.plans.get(name, []), (due, action, arg)], key=lambda p: p[0]))

    def _set_plans(self, name: str, plans: list[tuple[int, str, str | None]]) -> None:
        if plans:
            self.plans[name] = plans
        else:
            self.plans.pop(name, None)

    def tick(self, name: str) -> None:
        """One more /api request names session `name`: count it and apply the plans now due (before serving)."""
        with self._lock:
            when = self.delete_when.get(name)
            if when is not None and when():
                del self.delete_when[name]
                self.deleted.add(name)
            plans = self.plans.get(name)
            if not plans:
                return
            n = self.session_requests[name] = self.session_requests.get(name, 0) + 1
            while plans and plans[0][0] <= n:
                _, action, arg = plans.pop(0)
                if action == "delete":
                    self.deleted.add(name)
                else:
                    self.statuses[name] = arg  # type: ignore[assignment]
            self._set_plans(name, plans)
