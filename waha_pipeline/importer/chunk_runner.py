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

# Files each stage persists.
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "raw_chat_list": ("chats",),
    "fetched_messages": ("fetched", "reads"),  # the messages, and per chat range how far it is proven read
    # ... and the rows that are neither messages nor rejects by reason, and chats with rows after the plan time
    "resolved_contacts": ("contacts", "messages", "rejects", "skipped", "late_chats"),
    "session_batch": ("contacts", "assigned", "rejects", "sessions"),
    "committed_rows": (),
}
# What the commit reads from earlier stages' files when it does not compute them: what the fetch proved, the rows
# skipped by reason and the late chats. A stage loaded for a commit needs these too, or it is computed again.
COMMIT_INPUTS: dict[str, tuple[str, ...]] = {
    "resolved_contacts": ("reads",),
    "session_batch": ("reads", "skipped", "late_chats"),
}


def load_files(stage: str, committing: bool) -> tuple[str, ...]:
    """The files a LOAD of `stage` reads; raw_chat_list reads none (its chats come from the plan in the ledger)."""
    if stage == "raw_chat_list":
        return ()
    return STAGE_FILES[stage] + (COMMIT_INPUTS.get(stage, ()) if committing else ())


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
    persisted: set[str]  # stages whose files the stage store listed when the chunk was taken
    fetch: _Fetch | None  # None when the fetch is read from disk, not needed, or the channel is gone


class _Inputs(NamedTuple):
    plan: dict[str, Action]  # the plan after any fallback
    frames: dict[str, pd.DataFrame]  # file name -> frame, for every stage the plan loads
    recomputed: tuple[str, ...]  # stages planned as LOAD whose files were missing when read


class _ChannelGone(WahaPermanentError):
    """WAHA said earlier in the run that the channel does not exist: its remaining chunks fail without asking."""


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
                persisted = self._persisted(work, "committed_rows" in selected)
                plan = stage_actions(selected, persisted)
                fetch = None
                if plan["fetched_messages"] in (Action.EMIT, Action.COMPUTE) and gone is None:
                    fetch = self._submit_fetch(loop, client, work)
                ahead.append(_Taken(work, plan, persisted, fetch))

        try:
            while True:
                yield from take()
                if not ahead:
                    return
                work, plan, persisted, fetch = ahead.popleft()
                key = work.context.chunk_key
                committing = plan["committed_rows"] is Action.EMIT
                if committing:
                    self.store.mark_chunk_started(work.context.plan_id, key)
                progress = [STAGES[0]]  # the stage in progress, kept up to date by _load and _stages
                try:
                    inputs = self._load(work, selected, persisted, plan, progress)
                    if fetch is None and inputs.plan["fetched_messages"] is not Action.LOAD:
                        if gone is not None:  # failed fast: WAHA is not asked again once it said the channel is gone
                            progress[0] = "fetched_messages"
                            raise _ChannelGone(gone)
                        if inputs.plan["fetched_messages"] is not Action.SKIP:  # a stage file was missing
                            fetch = self._submit_fetch(loop, client, work)
                    yield from self._stages(work, inputs, fetch, progress)
                except Exception as exc:  # noqa: BLE001 - every failure is reported per chunk, never swallowed
                    stage = progress[0]
                    permanent = is_permanent(exc)
                    if isinstance(exc, WahaSessionNotFound):
                        gone = f"channel gone: {exc}"
                    reason = one_line(exc)
                    if not isinstance(exc, _ChannelGone):
                        logger.warning("chunk %s failed at %s: %s", key, stage, reason)
                    if committing:
                        self.store.mark_chunk_failed(work.context.plan_id, key, reason)
                    yield ChunkFailed(key, stage, reason, permanent, getattr(exc, "retry_after", None))
        finally:
            for taken in ahead:
                if taken.fetch is not None:
                    taken.fetch.future.cancel()

    def _submit_fetch(self, loop: BackgroundLoop, client: WahaClient, work: stages.ChunkWork) -> _Fetch:
        covered = self.store.chat_coverage(work.context.channel_id, [c.chat_id for c in work.chats])
        return _Fetch(loop.submit(self._fetch(client, work, covered)), covered)

    def _load(
        self, work: stages.ChunkWork, selected: set[str], persisted: set[str], plan: dict[str, Action],
        progress: list[str],
    ) -> _Inputs:
        """Read the files of every stage the plan loads. A file missing now although it was listed (deleted since,
        pruned, or read through a listing that was stale) makes its stage computed instead, from the stages before
        it, as if it had never been persisted: the chunk still commits what WAHA holds."""
        key, plan_id = work.context.chunk_key, work.context.plan_id
        committing = "committed_rows" in selected
        persisted, recomputed = set(persisted), []
        while True:
            frames: dict[str, pd.DataFrame] = {}
            missing: str | None = None
            for stage in (s for s in STAGES if plan[s] is Action.LOAD):
                progress[0] = stage
                for name in load_files(stage, committing):
                    frame = self.stage_store.read(plan_id, key, name)
                    if frame is None:
                        missing = name
                        break
                    frames[name] = frame
                if missing is not None:
                    logger.warning("chunk %s: stage file %s of %s is missing from %s; computing %s again",
                                   key, missing, stage, self.stage_store.display_url, stage)
                    recomputed.append(stage)
                    persisted.discard(stage)
                    plan = stage_actions(selected, persisted)
                    break
            if missing is None:
                progress[0] = STAGES[0]
                return _Inputs(plan, frames, tuple(recomputed))

    def _stages(
        self, work: stages.ChunkWork, inputs: _Inputs, fetch: _Fetch | None, progress: list[str]
    ) -> Iterator[StageDone]:
        """Yield an event as each emitted stage completes; raise at the first stage that fails."""
        key, plan_id = work.context.chunk_key, work.context.plan_id
        plan, loaded = inputs.plan, inputs.frames
        started = time.monotonic()
        # stages whose stored output was missing and computed again: on every materialization of the chunk
        noted = {"stages_recomputed": list(inputs.recomputed)} if inputs.recomputed else {}

        chats = stages.raw_chat_list(work)
        if plan["raw_chat_list"] is Action.EMIT:
            self.stage_store.write(plan_id, key, "chats", chats)
            yield StageDone(key, "raw_chat_list", {"chats": len(chats), "dagster/row_count": len(chats), **noted})

        stage = progress[0] = "fetched_messages"
        fetched = reads = None
        stats = WahaStats()  # stays empty when the fetch is read back from disk
        if plan[stage] is Action.LOAD:
            fetched, reads = loaded["fetched"], loaded["reads"]
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
                    **noted,
                })

        stage = progress[0] = "resolved_contacts"
        resolved = None
        if plan[stage] is Action.LOAD:
            resolved = stages.Resolved(**{n: loaded[n] for n in STAGE_FILES[stage]})
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
                    **noted,
                })

        stage = progress[0] = "session_batch"
        assigned = None
        if plan[stage] is Action.LOAD:
            assigned = stages.Assigned(messages=loaded["assigned"], contacts=loaded["contacts"],
                                       rejects=loaded["rejects"], sessions=loaded["sessions"])
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
                    **noted,
                })

        stage = progress[0] = "committed_rows"
        if plan[stage] is Action.EMIT:
            assert assigned is not None
            if reads is None:  # committed from later stages' files: what the fetch proved was loaded with them
                reads = loaded["reads"]
            if resolved is None:
                skipped, late = loaded["skipped"], loaded["late_chats"]
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
                **noted,
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

    def _persisted(self, work: stages.ChunkWork, committing: bool) -> set[str]:
        """Stages whose files (and, for a commit, the commit's inputs) the stage store lists, in one listing."""
        names = self.stage_store.names(work.context.plan_id, work.context.chunk_key)
        return {stage for stage in STAGES[:-1] if set(load_files(stage, committing) or STAGE_FILES[stage]) <= names}


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
