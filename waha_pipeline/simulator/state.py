"""Mutable server-side state of one simulator: dataset, live session statuses, api key, stats and faults.

Why a separate object: the test thread and the server's event loop share it (status changes, stats reads),
so the pieces that both touch are guarded by one lock and kept small.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import orjson

from waha_pipeline.simulator.dataset import Dataset, SimChat, SimSession

SESSION_STATUSES = ("STOPPED", "STARTING", "SCAN_QR_CODE", "PASSKEY_REQUIRED", "PASSKEY_CONFIRMATION_REQUIRED",
                    "WORKING", "FAILED")
STAT_KINDS = ("sessions", "chats", "messages", "lids", "other")


@dataclass
class Faults:
    """Fault injection consulted by the middleware on /api routes. Only latency and a concurrency cap so far."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    max_concurrent: int | None = None  # requests beyond this queue (like a saturated WAHA worker)

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "max_concurrent": self.max_concurrent}


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
            self.in_flight = 0
            self.max_in_flight = 0

    def begin(self, kind: str) -> None:
        with self._lock:
            self.by_kind[kind] += 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight

    def end(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def count_chat(self, chat_id: str) -> None:
        with self._lock:
            self.messages_by_chat[chat_id] = self.messages_by_chat.get(chat_id, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.by_kind, "total": sum(self.by_kind.values()),
                    "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                    "messages_by_chat": dict(self.messages_by_chat), "control": self.control,
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}


class ChatIndex:
    """A session's chat list pre-sorted and pre-encoded once per sortBy, so /chats is a slice and a join."""

    def __init__(self, chats: list[SimChat]) -> None:
        encoded = {id(c): orjson.dumps({"id": c.wire_id, "name": c.name,
                                        "conversationTimestamp": c.conversation_timestamp}) for c in chats}

        def blob(c: SimChat) -> bytes:
            return encoded[id(c)]

        def serial(c: SimChat) -> str:
            return c.wire_id["_serialized"] if isinstance(c.wire_id, dict) else c.wire_id

        by_id = sorted(chats, key=serial)
        self.asc: dict[str, list[bytes]] = {"id": [blob(c) for c in by_id]}
        self.desc: dict[str, list[bytes]] = {"id": self.asc["id"][::-1]}
        values = {"name": lambda c: None if c.name is None else c.name.casefold(),
                  "conversationTimestamp": lambda c: c.conversation_timestamp}
        for by, value in values.items():
            # nulls last in both orders; ties broken by id, so offset paging is consistent
            known = sorted((c for c in by_id if value(c) is not None), key=value)  # stable: id order kept
            nulls = [blob(c) for c in by_id if value(c) is None]
            self.asc[by] = [blob(c) for c in known] + nulls
            self.desc[by] = [blob(c) for c in reversed(known)] + nulls


@dataclass
class SimulatorState:
    dataset: Dataset
    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)
    stats: Stats = field(default_factory=Stats)
    statuses: dict[str, str] = field(default_factory=dict)
    chat_index: dict[str, ChatIndex] = field(default_factory=dict)
    engine: str = "GOWS"
    version: str = "2026.7.1"

    def __post_init__(self) -> None:
        for name, sess in self.dataset.sessions.items():
            self.statuses.setdefault(name, sess.status)
            self.chat_index[name] = ChatIndex(sess.chats)

    def session(self, name: str) -> SimSession | None:
        return self.dataset.sessions.get(name)

    def set_status(self, name: str, status: str) -> None:
        if name not in self.dataset.sessions:
            raise KeyError(name)
        if status not in SESSION_STATUSES:
            raise ValueError(f"unknown session status {status!r}; one of {', '.join(SESSION_STATUSES)}")
        self.statuses[name] = status
