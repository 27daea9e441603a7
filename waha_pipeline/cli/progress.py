"""Progress of a running import, read from the CRM ledger (`import_chunks` of the plan) by a polling thread.

The ledger is what every chunk run writes, wherever it runs (this process, a worker process), so the numbers
are the ones `status` prints. On a terminal the progress is one line rewritten in place; otherwise (a log file,
a pipe, CI) it is a plain line at the start, every PLAIN_EVERY_S seconds or PLAIN_EVERY_FRACTION of the chunks,
and at the end.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

POLL_S = 1.0
PLAIN_EVERY_S = 10.0
PLAIN_EVERY_FRACTION = 0.1


class LedgerChunk(Protocol):
    chunk_key: str
    status: str
    attempts: int
    messages: int | None


@dataclass(frozen=True)
class Tally:
    """The chunks one command runs: how many ended in this run, and the messages its commits hold."""

    total: int
    committed: int
    failed: int
    messages: int

    @property
    def done(self) -> int:
        return self.committed + self.failed


def baseline_of(chunks: Sequence[LedgerChunk]) -> dict[str, tuple[str, int]]:
    """Each chunk's (status, attempts) before the run: what a chunk must change to count as done in it."""
    return {c.chunk_key: (c.status, c.attempts) for c in chunks}


def tally(chunks: Sequence[LedgerChunk], keys: Collection[str], baseline: Mapping[str, tuple[str, int]]) -> Tally:
    """A chunk of `keys` counts as committed once the ledger says committed and it was not before; as failed once
    it says failed after an attempt this run started (a chunk failed before and being re-run counts as failed from
    its new attempt's start until it commits; the ledger does not tell a running re-run from a failed one)."""
    wanted = set(keys)
    committed = failed = messages = 0
    for c in chunks:
        if c.chunk_key not in wanted:
            continue
        status_before, attempts_before = baseline.get(c.chunk_key, ("pending", 0))
        if c.status == "committed" and status_before != "committed":
            committed += 1
            messages += c.messages or 0
        elif c.status == "failed" and (status_before == "pending" or c.attempts > attempts_before):
            failed += 1
    return Tally(total=len(wanted), committed=committed, failed=failed, messages=messages)


def clock_text(seconds: float) -> str:
    """`1:05:09` / `4:07`: a duration for humans, whole seconds."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(t: Tally, elapsed: float) -> str:
    """`chunks 12/40 (1 failed), 3,400 messages committed, 850 msg/s, ETA 0:33`. The ETA assumes the chunks left
    take as long as the ones done; unknown until one is done."""
    failed = f" ({t.failed} failed)" if t.failed else ""
    rate = t.messages / elapsed if elapsed > 0 else 0.0
    if t.done >= t.total:
        eta = "done"
    elif t.done == 0 or elapsed <= 0:
        eta = "ETA -"
    else:
        eta = f"ETA {clock_text(elapsed / t.done * (t.total - t.done))}"
    return (f"chunks {t.done}/{t.total}{failed}, {t.messages:,} messages committed, {rate:,.0f} msg/s, {eta}")


def plain_line_due(last_at: float, last_done: int, now: float, t: Tally) -> bool:
    """A plain (not in place) line is due every PLAIN_EVERY_S seconds, or when another PLAIN_EVERY_FRACTION of the
    chunks ended since the last line."""
    step = max(1, math.ceil(t.total * PLAIN_EVERY_FRACTION))
    return now - last_at >= PLAIN_EVERY_S or t.done - last_done >= step


class ProgressReporter:
    """Prints the progress of `keys` while the `with` block runs. `read` returns the plan's ledger rows; a read
    that fails (the CRM busy or away) is skipped, the report after the run says what happened."""

    def __init__(
        self,
        read: Callable[[], Sequence[LedgerChunk]],
        keys: Collection[str],
        stream: TextIO,
        *,
        in_place: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
    ) -> None:
        self._read, self._keys, self._stream, self._clock, self._poll_s = read, list(keys), stream, clock, poll_s
        self.in_place = _is_terminal(stream) if in_place is None else in_place
        self._baseline: dict[str, tuple[str, int]] = {}
        self._started = 0.0
        self._last_at = 0.0
        self._last_done = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            self._baseline = baseline_of(self._read())
        except Exception:  # noqa: BLE001 - no baseline: every chunk counts from pending
            self._baseline = {}
        self._started = self._clock()
        self.tick(force=True)

    def tick(self, *, force: bool = False) -> None:
        """Read the ledger once and print if a line is due (always in place on a terminal)."""
        try:
            t = tally(self._read(), self._keys, self._baseline)
        except Exception:  # noqa: BLE001 - see the class docstring
            return
        now = self._clock()
        line = "progress: " + progress_line(t, now - self._started)
        with self._lock:
            if self.in_place:
                self._stream.write("\r" + line + "\x1b[K")
            elif force or plain_line_due(self._last_at, self._last_done, now, t):
                self._stream.write(line + "\n")
                self._last_at, self._last_done = now, t.done
            else:
                return
            self._stream.flush()

    def stop(self) -> None:
        """The final line, from the ledger as the runs left it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.tick(force=True)
        if self.in_place:
            self._stream.write("\n")
            self._stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.tick()

    def __enter__(self) -> ProgressReporter:
        self.start()
        self._thread = threading.Thread(target=self._loop, name="waha-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
