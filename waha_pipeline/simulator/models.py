"""The simulated WhatsApp history as plain data: specs, sessions, chats, stored messages and the chat kinds and
defects they are made of, apart from the generator so the server state and the ground truth read it without
depending on how it was generated."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import orjson

from waha_pipeline.simulator import engines as eng

# Chat kinds (how the chat is generated; the importer only ever sees the wire form).
DIRECT = "direct"  # "<digits>@c.us" as a string
DIRECT_OBJ = "direct_obj"  # @c.us chat whose id arrives as a WEBJS-style object {server,user,_serialized}
DIRECT_SWA = "direct_swa"  # @c.us chat whose id arrives as "<digits>@s.whatsapp.net"
LID_MAPPED = "lid_mapped"  # "<n>@lid", phone known, and that phone has no @c.us chat
LID_DUP = "lid_dup"  # "<n>@lid", phone known, and that phone also has a @c.us chat (same contact)
LID_UNKNOWN = "lid_unknown"  # "<n>@lid", pn null in the lid map
LID_ALT = "lid_alt"  # "<n>@lid" unknown to /lids whose messages carry the phone (GOWS SenderAlt, NOWEB remoteJidAlt)
GROUP = "group"  # "...@g.us"
STATUS = "status"  # "status@broadcast"
BROADCAST = "broadcast"  # "<id>@broadcast"
NEWSLETTER = "newsletter"  # "<n>@newsletter"
INJECTED = "injected"  # a chat added at run time with any id string (SimulatorState.add_chat); never imported

DIRECT_KINDS = frozenset({DIRECT, DIRECT_OBJ, DIRECT_SWA})
LID_KINDS = frozenset({LID_MAPPED, LID_DUP, LID_UNKNOWN, LID_ALT})
ONE_TO_ONE_KINDS = DIRECT_KINDS | LID_KINDS
ALL_KINDS = (DIRECT, DIRECT_OBJ, DIRECT_SWA, LID_MAPPED, LID_DUP, LID_UNKNOWN, LID_ALT, GROUP, STATUS, BROADCAST,
             NEWSLETTER)

CONTENT_TYPES = ("text", "image", "video", "audio", "voice", "document", "sticker", "location", "contact", "other")

# Malformed message defects (SPEC 6.8); the cycle order decides which ones a small dataset gets.
DEFECTS = ("missing_id", "missing_timestamp", "string_timestamp", "fromme_not_bool")
NO_TIMESTAMP = "no_timestamp"  # the engine quirk whose message carries no time in any field (GOWS zero time)


@dataclass(frozen=True)
class SessionSpec:
    """One WAHA session (a CRM channel). Sizes default to the DatasetSpec's."""

    name: str = "demo"
    status: str = "WORKING"
    tenant_id: str | None = None  # -> config.metadata.tenant_id when set
    chats: int | None = None
    target_messages: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    seed: int = 7
    chats: int = 1176
    target_messages: int = 5700
    anchor: int | None = None  # Unix second "now" of the dataset; None -> the caller supplies one
    history_days: int = 365
    sessions: tuple[SessionSpec, ...] = (SessionSpec(),)
    reaction_every: int = 12  # ~1 hidden reaction per this many messages (GOWS drops them from pages)
    # The engine whose message objects, paging and chat list are served (simulator/engines.py).
    engine: str = "gows"
    # WAHA <= 2024 behaviour of the engine: NOWEB serves protocol rows (revoke/edit) and lists only chats that
    # have a conversationTimestamp; WEBJS group messages name the sender only in `_data.author`.
    legacy: bool = False
    # Version quirks of the messages endpoint: WEBJS before 2025.10.5 ignored `offset`; WEBJS 2026.7.1 ignores
    # `filter.timestamp.lte` (devlikeapro/waha #2164).
    ignore_offset: bool = False
    ignore_lte: bool = False
    # Runs of rows the engine drops after slicing (a reaction burst): with >= 2 pages of them in a row, some
    # page comes back empty while later offsets still hold messages.
    hidden_bursts: int = 2
    hidden_burst_rows: int = 1100

    def __post_init__(self) -> None:
        if self.engine not in eng.ENGINES:
            raise ValueError(f"engine must be one of {', '.join(eng.ENGINES)}, got {self.engine!r}")


class StoredMessage:
    """One item of a chat's store, in serving order. `blob` is the exact JSON served (None = hidden)."""

    __slots__ = (
        "ts", "sort_id", "seq", "from_me", "blob", "external_id", "body", "content_type",
        "push_name", "participant", "defect", "alt", "row",
    )

    def __init__(
        self, ts: int, sort_id: str, seq: int, from_me: bool, blob: bytes | None, external_id: str | None,
        body: str | None, content_type: str, push_name: str | None, participant: str | None,
        defect: str | None, alt: bytes | None = None, row: str | None = None,
    ) -> None:
        self.ts = ts  # timestamp used to sort and filter (also for malformed items, whose wire value is bad)
        self.sort_id = sort_id  # tie-breaker: the id ("" when missing)
        self.seq = seq  # second tie-breaker so duplicated ids still have a total order
        self.from_me = from_me  # direction used by filter.fromMe
        self.blob = blob
        self.external_id = external_id
        self.body = body
        self.content_type = content_type
        self.push_name = push_name  # _data.Info.PushName of an inbound message
        self.participant = participant
        self.defect = defect  # None for good messages, a DEFECTS value (or NO_TIMESTAMP) for rejected ones
        self.alt = alt  # WEBJS: the blob served when the request has filter.timestamp.gte (no top-level timestamp)
        self.row = row  # None for a real message; a non-message reason (engines.REACTION ...) otherwise

    @property
    def hidden(self) -> bool:
        return self.blob is None

    def raw(self, gte: bool = False) -> dict | None:
        blob = (self.alt or self.blob) if gte else self.blob
        return None if blob is None else orjson.loads(blob)


@dataclass
class SimChat:
    id: str  # normalized: "<d>@c.us", "<n>@lid", "...@g.us", "status@broadcast", "<x>@broadcast", "<n>@newsletter"
    kind: str
    wire_id: str | dict  # what /chats returns
    name: str | None
    entries: list[StoredMessage] = field(default_factory=list)  # sorted by (ts, sort_id, seq)
    list_quirk: str | None = None  # chat list: "missing" or "stale" conversationTimestamp (NOWEB, WEBJS)
    alt_phone: str | None = None  # LID_ALT: the phone its messages carry
    ts: list[int] = field(default_factory=list)  # entries' ts, for bisect
    _by_dir: dict[bool, tuple[list[int], list[StoredMessage]]] | None = None

    @property
    def conversation_timestamp(self) -> int | None:
        for e in reversed(self.entries):
            if e.blob is not None:
                return e.ts
        return None

    def listed_timestamp(self) -> int | None:
        """The chat list's activity time: the true one, or its quirk (missing; stale = a week before)."""
        ts = self.conversation_timestamp
        if ts is None or self.list_quirk == "missing":
            return None
        return ts - 7 * 86400 if self.list_quirk == "stale" else ts

    def finalize(self) -> None:
        self.entries.sort(key=lambda e: (e.ts, e.sort_id, e.seq))
        self.ts = [e.ts for e in self.entries]
        self._by_dir = None

    def by_direction(self, from_me: bool) -> tuple[list[int], list[StoredMessage]]:
        if self._by_dir is None:
            split: dict[bool, tuple[list[int], list[StoredMessage]]] = {True: ([], []), False: ([], [])}
            for e in self.entries:
                ts, items = split[e.from_me]
                ts.append(e.ts)
                items.append(e)
            self._by_dir = split
        return self._by_dir[from_me]

    def window(self, gte: int | None, lte: int | None, from_me: bool | None) -> tuple[list[StoredMessage], int, int]:
        """(items, lo, hi): items[lo:hi] are the stored entries with gte <= ts <= lte (and direction)."""
        ts, items = (self.ts, self.entries) if from_me is None else self.by_direction(from_me)
        lo = 0 if gte is None else bisect.bisect_left(ts, gte)
        hi = len(ts) if lte is None else bisect.bisect_right(ts, lte)
        return items, lo, max(lo, hi)

    def raw_messages(self) -> list[dict]:
        """Every served row (hidden ones excluded), ascending, exactly as the API returns it without gte."""
        return [orjson.loads(e.blob) for e in self.entries if e.blob is not None]


def chat_listed(chat: SimChat, spec: DatasetSpec) -> bool:
    """Whether /chats lists the chat: NOWEB 2024.10 (SQL store) lists only chats with a conversationTimestamp."""
    return not (spec.engine == "noweb" and spec.legacy and chat.listed_timestamp() is None)


@dataclass
class SimSession:
    name: str
    status: str
    tenant_id: str | None
    me_phone: str
    me_lid: str
    me_push_name: str
    chats: list[SimChat]
    lids: dict[str, str]  # lid digits -> phone digits (only known mappings)
    chats_by_id: dict[str, SimChat] = field(default_factory=dict)  # normalized ids and wire aliases
    pn_to_lid: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for chat in self.chats:
            self.chats_by_id[chat.id] = chat
            if chat.kind == DIRECT_SWA:
                self.chats_by_id[chat.id.replace("@c.us", "@s.whatsapp.net")] = chat
        self.pn_to_lid = {pn: lid for lid, pn in self.lids.items()}

    def find_chat(self, chat_id: str) -> SimChat | None:
        chat = self.chats_by_id.get(chat_id)
        if chat is None and chat_id.isdigit():  # WAHA's ensureSuffix: bare digits mean @c.us
            chat = self.chats_by_id.get(chat_id + "@c.us")
        if chat is None and chat_id.endswith("@s.whatsapp.net"):
            chat = self.chats_by_id.get(chat_id[: -len("@s.whatsapp.net")] + "@c.us")
        return chat

    def counts(self) -> dict[str, int]:
        kinds = {k: 0 for k in ALL_KINDS}
        served = hidden = malformed = rows = 0
        for chat in self.chats:
            kinds[chat.kind] = kinds.get(chat.kind, 0) + 1
            for e in chat.entries:
                if e.blob is None:
                    hidden += 1
                elif e.row is not None:
                    rows += 1
                else:
                    served += 1
                    malformed += e.defect is not None
        return {"chats": len(self.chats), **{f"chats_{k}": v for k, v in kinds.items()},
                "served_messages": served, "hidden_reactions": hidden, "served_non_messages": rows,
                "malformed": malformed, "lid_mappings": len(self.lids)}


@dataclass
class Dataset:
    spec: DatasetSpec
    anchor: int
    sessions: dict[str, SimSession]
