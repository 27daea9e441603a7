"""Run the stages of a range of chunks: WAHA fetches kept in flight ahead, one commit per chunk.

Independent of Dagster: it yields one event per (stage, chunk) that completed and one per chunk that failed,
and the Dagster asset turns them into materializations and failures. A failing chunk never stops the others,
except that once WAHA says the channel is gone, the remaining chunks fail fast without calling WAHA.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
from sqlalchemy import exc as sa_exc

from waha_pipeline.domain.coverage import Coverage
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.errors import ChunkError, WahaPermanentError, WahaSessionNotFound
from waha_pipeline.importer import stages
from waha_pipeline.importer.background_loop import BackgroundLoop
from waha_pipeline.importer.stage_actions import STAGES, Action, stage_actions
from waha_pipeline.importer.stage_store import StageStore
from waha_pipeline.waha.client import WahaClient, WahaStats

logger = logging.getLogger(__name__)

# Files each stage persists; a stage counts as persisted when all of its files exist.
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "raw_chat_list": ("chats",),
    "fetched_messages": ("fetched", "reads"),  # the messages, and per chat range how far it is proven read
    # ... and the rows that are neither messages nor rejects by reason, and chats with rows after the plan time
    "resolved_contacts": ("contacts", "messages", "rejects", "skipped", "late_chats"),
    "session_batch": ("contacts", "assigned", "rejects", "sessions"),
    "committed_rows": (),
}


class ChunkDeadlineExceeded(Exception):
    """The chunk's fetch ran past its deadline; transient (WAHA may be faster on a later attempt)."""


@dataclass(frozen=True)
class StageDone:
    chunk_key: str
    stage: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ChunkFailed:
    chunk_key: str
    stage: str
    reason: str
    permanent: bool
    retry_after: float | None = None  # WAHA asked to wait this long (429, open circuit) before trying again


@dataclass
class _Fetch:
    future: Future[tuple[tuple[pd.DataFrame, pd.DataFrame], WahaStats]]
    covered: dict[str, Coverage]  # what the CRM held when the fetch was planned; resolve reuses it
    started: float = field(default_factory=time.monotonic)


class _Taken(NamedTuple):
    work: stages.ChunkWork
    plan: dict[str, Action]
    fetch: _Fetch | None  # None when the fetch is read from disk, not needed, or the channel is gone


class ChunkRunner:
    def __init__(
        self,
        store: CrmStore,
        stage_store: StageStore,
        client_factory: Callable[[], WahaClient],
        *,
        page_size: int = 500,
        prefetch: int = 2,
        fetch_deadline_seconds: float = 600.0,
        max_chunk_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.stage_store = stage_store
        self.client_factory = client_factory
        self.page_size = page_size
        self.prefetch = max(0, prefetch)
        self.fetch_deadline_seconds = fetch_deadline_seconds
        self.max_chunk_bytes = max_chunk_bytes

    def run(
        self, chunk_keys: Iterable[str], selected: set[str], *, skip_committed: bool = False
    ) -> Iterator[StageDone | ChunkFailed]:
        """Chunks are taken from `chunk_keys` only as they are needed (at most `prefetch` ahead of the one being
        worked on), so keys handed out by another process as workers ask for them keep the workers balanced.
        `skip_committed`: on a step retry, chunks the ledger shows committed in their plan are not redone."""
        with BackgroundLoop() as loop:
            client = self.client_factory()
            loop.run(client.__aenter__())
            try:
                yield from self._run(loop, client, iter(chunk_keys), selected, skip_committed)
            finally:
                loop.run(client.__aexit__(None, None, None))

    def _run(
        self,
        loop: BackgroundLoop,
        client: WahaClient,
        keys: Iterator[str],
        selected: set[str],
        skip_committed: bool,
    ) -> Iterator[StageDone | ChunkFailed]:
        ahead: deque[_Taken] = deque()  # chunks taken, their fetches in flight
        committed: dict[str, set[str]] = {}  # plan id -> chunks the ledger showed committed (skip_committed)
        gone: str | None = None  # reason, once WAHA said the channel does not exist

        def take() -> Iterator[ChunkFailed]:
            while len(ahead) <= self.prefetch:
                key = next(keys, None)
                if key is None:
                    return
                try:
                    work = stages.load_work(self.store, key)
                except ChunkError as exc:
                    yield ChunkFailed(key, STAGES[0], str(exc), permanent=True)
                    continue
                plan_id = work.context.plan_id
                if skip_committed:
                    if plan_id not in committed:
                        committed[plan_id] = self.store.committed_chunk_keys(plan_id)
                    if key in committed[plan_id]:
                        logger.info("chunk %s already committed in plan %s; not redone on retry", key, plan_id)
                        continue
                plan = stage_actions(selected, self._persisted(work))
                fetch = None
                if plan["fetched_messages"] in (Action.EMIT, Action.COMPUTE) and gone is None:
                    covered = self.store.chat_coverage(work.context.channel_id, [c.chat_id for c in work.chats])
                    fetch = _Fetch(loop.submit(self._fetch(client, work, covered)), covered)
                ahead.append(_Taken(work, plan, fetch))

        try:
            while True:
                yield from take()
                if not ahead:
                    return
                work, plan, fetch = ahead.popleft()
                key = work.context.chunk_key
                committing = plan["committed_rows"] is Action.EMIT
                if gone is not None and fetch is None and plan["fetched_messages"] is not Action.LOAD:
                    if committing:  # failed fast: WAHA is not asked again once it said the channel is gone
                        self.store.mark_chunk_started(work.context.plan_id, key)
                        self.store.mark_chunk_failed(work.context.plan_id, key, gone)
                    yield ChunkFailed(key, "fetched_messages", gone, permanent=True)
                    continue
                if committing:
                    self.store.mark_chunk_started(work.context.plan_id, key)
                progress = [STAGES[0]]  # the stage in progress, kept up to date by _stages
                try:
                    yield from self._stages(work, plan, fetch, progress)
                except Exception as exc:  # noqa: BLE001 - every failure is reported per chunk, never swallowed
                    stage = progress[0]
                    permanent = is_permanent(exc)
                    if isinstance(exc, WahaSessionNotFound):
                        gone = f"channel gone: {exc}"
                    reason = one_line(exc)
                    logger.warning("chunk %s failed at %s: %s", key, stage, reason)
                    if committing:
                        self.store.mark_chunk_failed(work.context.plan_id, key, reason)
                    yield ChunkFailed(key, stage, reason, permanent, getattr(exc, "retry_after", None))
        finally:
            for taken in ahead:
                if taken.fetch is not None:
                    taken.fetch.future.cancel()

    def _stages(
        self, work: stages.ChunkWork, plan: dict[str, Action], fetch: _Fetch | None, progress: list[str]
    ) -> Iterator[StageDone]:
        """Yield an event as each emitted stage completes; raise at the first stage that fails."""
        key, plan_id = work.context.chunk_key, work.context.plan_id
        started = time.monotonic()

        chats = stages.raw_chat_list(work)
        if plan["raw_chat_list"] is Action.EMIT:
            self.stage_store.write(plan_id, key, "chats", chats)
            yield StageDone(key, "raw_chat_list", {"chats": len(chats), "dagster/row_count": len(chats)})

        stage = progress[0] = "fetched_messages"
        fetched = reads = None
        stats = WahaStats()  # stays empty when the fetch is read back from disk
        if plan[stage] is Action.LOAD:
            fetched = self.stage_store.read(plan_id, key, "fetched")
            reads = self.stage_store.read(plan_id, key, "reads")
        elif plan[stage] is not Action.SKIP:
            assert fetch is not None, "every fetch is submitted before its chunk is processed"
            (fetched, reads), stats = fetch.future.result()
            self.stage_store.write(plan_id, key, "fetched", fetched)
            self.stage_store.write(plan_id, key, "reads", reads)
            if plan[stage] is Action.EMIT:
                waha = stats.to_dict()
                logger.info("chunk %s fetched %d messages: %s", key, len(fetched), waha)
                yield StageDone(key, stage, {
                    "chats": len(chats),
                    "messages": len(fetched),
                    "ranges_unproven": int((reads["proven_to"].fillna(-1) < reads["lte"]).sum()),
                    "waha_requests": stats.requests,
                    "waha_retries": stats.retries,
                    "waha_wait_429_seconds": waha["wait_429_seconds"],
                    "waha_latency_p50_ms": waha["latency_p50_ms"],
                    "waha_latency_p95_ms": waha["latency_p95_ms"],
                    "waha": waha,  # retries by cause, breaker changes, backoff, session and limiter waits
                    "fetch_seconds": round(time.monotonic() - fetch.started, 3),
                    "dagster/row_count": len(fetched),
                })

        stage = progress[0] = "resolved_contacts"
        resolved = None
        if plan[stage] is Action.LOAD:
            resolved = self._read_resolved(plan_id, key)
        elif plan[stage] is not Action.SKIP:
            assert fetched is not None
            resolved = stages.resolve(self.store, work, fetched, fetch.covered if fetch else None)
            for name in STAGE_FILES[stage]:
                self.stage_store.write(plan_id, key, name, getattr(resolved, name))
            if plan[stage] is Action.EMIT:
                skipped = stages.skipped_counts(resolved.skipped)
                yield StageDone(key, stage, {
                    "contacts": len(resolved.contacts),
                    "messages": len(resolved.messages),
                    "rejects": len(resolved.rejects),
                    "skipped": sum(skipped.values()),
                    "skipped_by_reason": skipped,
                    "late_chats": len(resolved.late_chats),
                    "dagster/row_count": len(resolved.contacts),
                })

        stage = progress[0] = "session_batch"
        assigned = None
        if plan[stage] is Action.LOAD:
            assigned = self._read_assigned(plan_id, key)
        elif plan[stage] is not Action.SKIP:
            assert resolved is not None
            assigned = stages.assign(self.store, work, resolved)
            self.stage_store.write(plan_id, key, "assigned", assigned.messages)
            self.stage_store.write(plan_id, key, "sessions", assigned.sessions)
            if plan[stage] is Action.EMIT:
                yield StageDone(key, stage, {
                    "messages": len(assigned.messages),
                    "sessions": len(assigned.sessions),
                    "dagster/row_count": len(assigned.messages),
                })

        stage = progress[0] = "committed_rows"
        if plan[stage] is Action.EMIT:
            assert assigned is not None
            if reads is None:  # committed from later stages on disk: what the fetch proved is on disk too
                reads = self._read_optional(plan_id, key, "reads")
            if resolved is None:
                skipped, late = (self._read_optional(plan_id, key, name) for name in ("skipped", "late_chats"))
            else:
                skipped, late = resolved.skipped, resolved.late_chats
            result = stages.commit(self.store, work, assigned, reads, skipped, late)
            yield StageDone(key, stage, {
                "chats": len(work.chats),
                "messages": result.messages_total,
                "messages_inserted": result.messages_inserted,
                "sessions": result.sessions,
                "contacts": result.contacts,
                "rejects": result.rejects,
                "skipped": None if skipped is None else int(skipped["rows"].sum()),
                "waha_requests": stats.requests,
                "waha_retries": stats.retries,
                "duration_seconds": round(time.monotonic() - started, 3),
                "dagster/row_count": result.messages_total,
            })

    async def _fetch(
        self, client: WahaClient, work: stages.ChunkWork, covered: dict[str, Coverage]
    ) -> tuple[tuple[pd.DataFrame, pd.DataFrame], WahaStats]:
        """Fetch a chunk within its deadline, so no chunk can hang for minutes whatever WAHA does."""
        chats = stages.raw_chat_list(work)
        # the chat list's last-message time of each chat, when the plan carries it (PlannedChat.last_message_at)
        last_at = {c.chat_id: c.last_message_at for c in work.chats}
        newest_first = await client.newest_first(work.waha_session)
        reads_from = {} if work.context.all_chats else covered  # a deep pass reads the covered spans again
        fetch = client.measured(
            stages.fetch_messages(client, work, chats, self.page_size, reads_from, last_at, newest_first,
                                  max_bytes=self.max_chunk_bytes)
        )
        try:
            return await asyncio.wait_for(fetch, self.fetch_deadline_seconds)
        except TimeoutError:
            raise ChunkDeadlineExceeded(
                f"fetching chunk {work.context.chunk_key} exceeded its {self.fetch_deadline_seconds:.0f} s deadline"
            ) from None

    def _persisted(self, work: stages.ChunkWork) -> set[str]:
        plan_id, key = work.context.plan_id, work.context.chunk_key
        return {
            stage
            for stage, files in STAGE_FILES.items()
            if files and all(self.stage_store.exists(plan_id, key, f) for f in files)
        }

    def _read_resolved(self, plan_id: str, key: str) -> stages.Resolved:
        frames = {n: self.stage_store.read(plan_id, key, n) for n in STAGE_FILES["resolved_contacts"]}
        return stages.Resolved(**frames)

    def _read_optional(self, plan_id: str, key: str, name: str) -> pd.DataFrame | None:
        """A stage file that stage directories written by earlier versions may lack."""
        return self.stage_store.read(plan_id, key, name) if self.stage_store.exists(plan_id, key, name) else None

    def _read_assigned(self, plan_id: str, key: str) -> stages.Assigned:
        frames = {n: self.stage_store.read(plan_id, key, n) for n in ("contacts", "rejects", "sessions")}
        return stages.Assigned(messages=self.stage_store.read(plan_id, key, "assigned"), **frames)  # type: ignore[arg-type]


def is_permanent(exc: BaseException) -> bool:
    """Retrying cannot help: WAHA refused for good, or the database rejected the data (not the connection)."""
    if isinstance(exc, (WahaPermanentError, ChunkError)):
        return True
    transient_db = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)
    return isinstance(exc, sa_exc.DBAPIError) and not isinstance(exc, transient_db)


def one_line(exc: BaseException) -> str:
    """The reason stored in the ledger and shown in Dagster: the database's own message, never SQL or row values."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
