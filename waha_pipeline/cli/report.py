"""Plain-text reports for the CLI: per-chunk lines and the channel summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ChunkLine(Protocol):
    chunk_key: str
    status: str
    chats: int | None
    messages: int | None
    rejects: int | None
    skipped: dict[str, int] | None
    last_error: str | None


def chunk_table(chunks: Sequence[ChunkLine], *, errors: bool = True) -> str:
    """One line per chunk; `errors=False` leaves the last error out (the import report prints each failure once,
    in its own line with the stage, see failure_line)."""
    rows = [("chunk", "state", "chats", "messages", "rejects", "skipped", "last error" if errors else "")]
    for c in chunks:
        error = (c.last_error or "") if errors else ""
        skipped = "-" if c.skipped is None else str(sum(c.skipped.values()))
        rows.append((c.chunk_key, c.status, str(c.chats or 0), str(c.messages or 0), str(c.rejects or 0), skipped,
                     error))
    last = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < last else cell for i, cell in enumerate(row)).rstrip() for row in rows
    )


def skipped_line(chunks: Sequence[ChunkLine]) -> str | None:
    """The rows WAHA served that the committed chunks neither stored nor rejected, by reason (SPEC 6.5, 6.8)."""
    total: dict[str, int] = {}
    for c in chunks:
        for reason, n in (c.skipped or {}).items():
            total[reason] = total.get(reason, 0) + n
    shown = [f"{reason} {n}" for reason, n in sorted(total.items()) if n]
    return "skipped rows: " + ", ".join(shown) if shown else None


def failure_line(chunk_key: str, status: str, stage: str | None, reason: str | None) -> str:
    """A chunk that did not commit, in one line: which, where, why."""
    where = f" at {stage}" if stage else ""
    if status == "pending":
        return f"chunk {chunk_key} pending{where}: {reason or 'not finished'}"
    return f"chunk {chunk_key} failed{where}: {' '.join((reason or 'no reason recorded').split())}"


def state_counts(chunks: Sequence[ChunkLine]) -> dict[str, int]:
    counts = {"committed": 0, "failed": 0, "pending": 0}
    for c in chunks:
        counts[c.status] = counts.get(c.status, 0) + 1
    return counts


def up_to_date_note(chats: int) -> str:
    """Suffix for a plan's summary line: the chats it left out because nothing of theirs changed."""
    return f"; {chats} chat(s) up to date, left out of this plan" if chats else ""


EXIT_MEANINGS = {
    0: "every chunk committed",
    1: "a chunk failed or was interrupted; `waha-pipeline rerun-failed CHANNEL` finishes the plan",
    2: "bad input or configuration; nothing was written",
}


def json_document(channel: Any, plan: Any, chunks: Sequence[ChunkLine], exit_code: int,
                  exit_meaning: str | None = None) -> dict[str, Any]:
    """What `status --json` and `import --json` print: the channel, its latest plan and every chunk, in one JSON
    document for scripts (times are Unix seconds; `window_start` null means the whole history)."""
    rows = [
        {"key": c.chunk_key, "state": c.status, "chats": c.chats or 0, "messages": c.messages or 0,
         "rejects": c.rejects or 0, "skipped": dict(c.skipped) if c.skipped is not None else None,
         "last_error": c.last_error}
        for c in chunks
    ]
    skipped: dict[str, int] = {}
    for c in chunks:
        for reason, n in (c.skipped or {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        "channel": {"slug": channel.slug, "session": channel.waha_session, "tenant": channel.tenant_id,
                    "account": channel.account, "waha_server": channel.waha_server},
        "plan": {"id": plan.id, "plan_time": plan.plan_time, "window_start": plan.window_start,
                 "window_end": plan.window_end, "days": plan.days, "chunk_size": plan.chunk_size,
                 "session_timeout_minutes": plan.session_timeout_minutes, "include_groups": plan.include_groups,
                 "up_to_date_chats": plan.skipped.get("up_to_date", 0)},
        "chunks": rows,
        "totals": {
            **state_counts(chunks),
            "chunks": len(rows),
            "chats": sum(r["chats"] for r in rows),
            "messages_committed": sum(r["messages"] for r in rows if r["state"] == "committed"),
            "rejects": sum(r["rejects"] for r in rows),
            "skipped": dict(sorted(skipped.items())),
        },
        "exit_code": exit_code,
        "exit_meaning": exit_meaning or EXIT_MEANINGS[exit_code],
    }
