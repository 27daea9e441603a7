"""The five stages of a chunk, as plain functions over frames: what the Dagster assets (and nothing else) run.

raw chat list -> fetched messages -> resolved contacts -> session-assigned batch -> committed rows.
Each stage reads the previous stage's output, so a stage can be re-run from its persisted Arrow files alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import pandas as pd

from waha_pipeline.crm.store import CommitResult, CrmStore
from waha_pipeline.domain.batch import (
    CONTACT_COLUMNS,
    MESSAGE_COLUMNS,
    REJECT_COLUMNS,
    SESSION_COLUMNS,
    ChunkBatch,
    ChunkContext,
    conform,
    empty_frame,
)
from waha_pipeline.domain.coverage import Coverage, Read, Span, missing_ranges
from waha_pipeline.domain.identity import named_by_push, resolve_contacts, with_learned_phones
from waha_pipeline.domain.messages import map_messages
from waha_pipeline.domain.plans import PlannedChat
from waha_pipeline.domain.sessions import assign_sessions
from waha_pipeline.errors import ChunkError, ChunkTooLarge
from waha_pipeline.settings import MB
from waha_pipeline.waha.client import WahaClient

CHAT_COLUMNS: dict[str, str] = {
    "chat_id": "string",
    "kind": "string",
    "name": "string",
    "phone": "string",
    "lid": "string",
    "group_id": "string",
}
FETCHED_COLUMNS: dict[str, str] = {"chat_id": "string", "payload": "string"}
# One row per (chat, range) read: every message with gte <= timestamp <= proven_to was read (NA: nothing proven).
READS_COLUMNS: dict[str, str] = {"chat_id": "string", "gte": "Int64", "lte": "int64", "proven_to": "Int64"}
ASSIGNED_COLUMNS: dict[str, str] = {**MESSAGE_COLUMNS, "session_id": "string"}
SKIPPED_COLUMNS: dict[str, str] = {"reason": "string", "rows": "int64"}
LATE_COLUMNS: dict[str, str] = {"chat_id": "string"}


@dataclass(frozen=True)
class ChunkWork:
    """A chunk as the ledger recorded it at plan time: its plan settings and exactly its chats."""

    context: ChunkContext
    waha_session: str
    chats: tuple[PlannedChat, ...]


@dataclass(frozen=True)
class Resolved:
    contacts: pd.DataFrame
    messages: pd.DataFrame
    rejects: pd.DataFrame
    skipped: pd.DataFrame  # SKIPPED_COLUMNS: rows WAHA served that are neither messages nor rejects, by reason
    late_chats: pd.DataFrame  # LATE_COLUMNS: chats with rows stamped after the plan time (coverage stays)


@dataclass(frozen=True)
class Assigned:
    contacts: pd.DataFrame
    messages: pd.DataFrame  # ASSIGNED_COLUMNS: the chunk's messages with the session they fall in
    rejects: pd.DataFrame
    sessions: pd.DataFrame  # of the chunk's contacts over stored + new messages; empty when nothing is new


def load_work(store: CrmStore, chunk_key: str) -> ChunkWork:
    """Chunk membership comes from the persisted plan, so a re-run imports the same chats (SPEC §7)."""
    found = store.latest_chunk(chunk_key)
    if found is None:
        raise ChunkError(f"chunk {chunk_key} is in no recorded plan; run `waha-pipeline import` for its channel")
    plan, chunk, chats = found
    channel = store.channel_by_id(plan.channel_id)
    context = ChunkContext(
        tenant_id=plan.tenant_id,
        channel_id=plan.channel_id,
        plan_id=plan.id,
        chunk_key=chunk.chunk_key,
        plan_time=plan.plan_time,
        window_start=plan.window_start,
        window_end=plan.window_end,
        session_timeout_minutes=plan.session_timeout_minutes,
        all_chats=plan.all_chats,
    )
    return ChunkWork(context=context, waha_session=channel.waha_session, chats=tuple(chats))


def raw_chat_list(work: ChunkWork) -> pd.DataFrame:
    return conform(pd.DataFrame({name: [getattr(c, name) for c in work.chats] for name in CHAT_COLUMNS}), CHAT_COLUMNS)


async def fetch_messages(
    client: WahaClient,
    work: ChunkWork,
    chats: pd.DataFrame,
    page_size: int,
    covered: Mapping[str, Coverage],
    last_at: Mapping[str, int | None] | None = None,
    newest_first: bool = False,
    *,
    max_bytes: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every message of every chat in the window that the CRM does not hold yet, raw, as WAHA sent it
    (FETCHED_COLUMNS), and one row per range read with how far it is proven read (READS_COLUMNS): the commit
    extends a chat's coverage only over that (SPEC 8).

    `last_at`: each chat's last-message time from the chat list (missing or None = unknown), the evidence that
    ends a read at an empty page; `newest_first`: the engine pages newest first (no such evidence then). Chats
    that need the same ranges are fetched together; a message fetched twice at a seam is deduplicated later.
    More than `max_bytes` of fetched JSON text fails the chunk (ChunkTooLarge, naming the chat that passed it)
    before the process runs out of memory.
    """
    context = work.context
    window = (context.window_start, context.window_end)
    by_ranges: dict[tuple[Span, ...], list[str]] = {}
    for chat_id in chats["chat_id"].tolist():
        known = covered.get(chat_id)
        by_ranges.setdefault(tuple(missing_ranges(window, known.span if known else None)), []).append(chat_id)
    fetched: dict[str, list[str]] = {}
    reads: list[tuple[str, int | None, int, int | None]] = []
    encode = _json_text if max_bytes is None else _Budget(context.chunk_key, max_bytes, chats["chat_id"].tolist())
    for ranges, chat_ids in by_ranges.items():
        for gte, lte in ranges:
            results = await client.read_many(
                work.waha_session, chat_ids, gte=gte, lte=lte, page_size=page_size, encode=encode,
                last_at=last_at, newest_first=newest_first,
            )
            for chat_id, result in results.items():
                fetched.setdefault(chat_id, []).extend(result.items)
                reads.append((chat_id, gte, lte, result.proven_to))
    ids: list[str] = []
    payloads: list[str] = []
    for chat_id in chats["chat_id"].tolist():
        texts = fetched.pop(chat_id, [])
        ids.extend([chat_id] * len(texts))
        payloads.extend(texts)
    frame = pd.DataFrame({"chat_id": pd.array(ids, dtype="string"), "payload": pd.array(payloads, dtype="string")})
    return frame, reads_frame(reads)


def reads_frame(reads: list[tuple[str, int | None, int, int | None]]) -> pd.DataFrame:
    """(chat_id, gte, lte, proven_to) rows as a READS_COLUMNS frame."""
    columns = list(zip(*reads)) if reads else [(), (), (), ()]
    return pd.DataFrame({name: pd.array(list(values), dtype=dtype)
                         for (name, dtype), values in zip(READS_COLUMNS.items(), columns)})


def proven_reads(frame: pd.DataFrame | None) -> dict[str, list[Read]]:
    """A READS_COLUMNS frame as `crm.coverage_rows.extend` takes it: chat -> [((gte, lte), proven_to), ...]."""
    out: dict[str, list[Read]] = {}
    if frame is None:
        return out
    for chat_id, gte, lte, proven_to in frame.itertuples(index=False, name=None):
        out.setdefault(chat_id, []).append(((None if pd.isna(gte) else int(gte), int(lte)),
                                            None if pd.isna(proven_to) else int(proven_to)))
    return out


def _json_text(item: object) -> str:
    return orjson.dumps(item).decode()


class _Budget:
    """`_json_text` that counts what the chunk holds and stops it past `max_bytes` (SPEC 6.8: a failure of the
    chunk, naming the chat, never of the process)."""

    def __init__(self, chunk_key: str, max_bytes: int, chat_ids: list[str]) -> None:
        self.chunk_key, self.max_bytes, self.chat_ids, self.used = chunk_key, max_bytes, chat_ids, 0

    def __call__(self, item: object) -> str:
        text = orjson.dumps(item).decode()
        self.used += len(text)
        if self.used > self.max_bytes:
            raise ChunkTooLarge(f"chunk {self.chunk_key}: its messages passed {self.max_bytes / MB:g} MB "
                                f"(IMPORT_CHUNK_MAX_MB) while chat {self._chat_of(item)} was read; "
                                "a smaller --chunk-size or a larger IMPORT_CHUNK_MAX_MB imports it")
        return text

    def _chat_of(self, item: object) -> str:
        """WAHA message ids embed their chat: `{fromMe}_{chat}_{id}`."""
        message_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(message_id, dict):
            message_id = message_id.get("_serialized")
        found = [c for c in self.chat_ids if isinstance(message_id, str) and f"_{c}_" in message_id]
        return found[0] if found else "(unknown)"


def resolve(
    store: CrmStore, work: ChunkWork, fetched: pd.DataFrame, covered: Mapping[str, Coverage] | None = None
) -> Resolved:
    """Map and validate the messages and resolve contacts, knowing what the CRM already holds of these chats
    (`covered`: the coverage the fetch was planned from, else read now). Phones that the messages themselves
    give for lids resolve the chunk's chats like WAHA's lid mapping does where that mapping has none."""
    context = work.context
    mapped = map_messages(
        fetched,
        channel_id=context.channel_id,
        window_start=context.window_start,
        window_end=context.window_end,
    )
    chats = with_learned_phones(work.chats, mapped.lid_phones)
    if covered is None:
        covered = store.chat_coverage(context.channel_id, [c.chat_id for c in chats])
    contacts, messages = resolve_contacts(
        chats,
        mapped.messages,
        tenant_id=context.tenant_id,
        stored_chats={chat for chat, known in covered.items() if known.has_messages},
        stored_push_names=store.latest_push_names(context.channel_id, named_by_push(context.tenant_id, chats)),
    )
    skipped = pd.DataFrame({"reason": list(mapped.skipped), "rows": list(mapped.skipped.values())})
    return Resolved(
        contacts=conform(contacts, CONTACT_COLUMNS),
        messages=conform(messages, MESSAGE_COLUMNS),
        rejects=conform(mapped.rejects, REJECT_COLUMNS),
        skipped=conform(skipped, SKIPPED_COLUMNS),
        late_chats=conform(pd.DataFrame({"chat_id": sorted(mapped.late_chats)}), LATE_COLUMNS),
    )


def skipped_counts(skipped: pd.DataFrame) -> dict[str, int]:
    """A SKIPPED_COLUMNS frame as reason -> rows, only the reasons that occurred."""
    return {reason: int(rows) for reason, rows in zip(skipped["reason"].tolist(), skipped["rows"].tolist()) if rows}


def assign(store: CrmStore, work: ChunkWork, resolved: Resolved) -> Assigned:
    """Sessions over stored + new messages of the chunk's contacts, as the commit will recompute them."""
    context = work.context
    new = resolved.messages
    if new.empty:  # nothing new: no session changes (the commit still refreshes statuses)
        return Assigned(resolved.contacts, conform(new, ASSIGNED_COLUMNS), resolved.rejects, empty_frame(SESSION_COLUMNS))
    stored = store.stored_messages(context.channel_id, resolved.contacts["id"].tolist())
    cols = ["contact_id", "external_id", "sent_at", "from_me"]
    everything = pd.concat([stored[cols], new[cols]], ignore_index=True)
    everything = everything.drop_duplicates("external_id", keep="last", ignore_index=True)
    session_of, sessions = assign_sessions(
        everything,
        channel_id=context.channel_id,
        timeout_minutes=context.session_timeout_minutes,
        plan_time=context.plan_time,
    )
    lookup = pd.Series(session_of.to_numpy(), index=everything["external_id"].to_numpy())
    assigned = new.assign(session_id=lookup.reindex(new["external_id"].to_numpy()).to_numpy())
    return Assigned(
        contacts=resolved.contacts,
        messages=conform(assigned, ASSIGNED_COLUMNS),
        rejects=resolved.rejects,
        sessions=conform(sessions, SESSION_COLUMNS),
    )


def commit(
    store: CrmStore,
    work: ChunkWork,
    assigned: Assigned,
    reads: pd.DataFrame | None,
    skipped: pd.DataFrame | None,
    late_chats: pd.DataFrame | None,
) -> CommitResult:
    """One transaction; the store recomputes sessions inside it, so a concurrent writer cannot skew them.

    A chat's coverage grows only over what `reads` proves read (None: nothing is proven) and never for
    `late_chats` (None, from stage files that lack it: no chat's coverage moves). `skipped` None: not known."""
    chats = work.chats
    batch = ChunkBatch(
        context=work.context,
        contacts=assigned.contacts,
        messages=conform(assigned.messages, MESSAGE_COLUMNS),
        rejects=assigned.rejects,
        chats=len(chats),
        planned_chats=chats,
        reads=proven_reads(reads),
        frozen_chats=frozenset(c.chat_id for c in chats) if late_chats is None
        else frozenset(late_chats["chat_id"].tolist()),
        skipped=None if skipped is None else skipped_counts(skipped),
        plan_chats=lambda conn: store.plan_chats(work.context.plan_id, conn),
    )
    return store.commit_chunk(batch)
