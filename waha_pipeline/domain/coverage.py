"""Which part of a plan window a chat still needs from WAHA, given the span its stored history already covers.

A chat's coverage is one closed interval [covered_from, covered_to] of Unix seconds (covered_from None = since
the beginning) whose messages are all in the CRM. A re-import fetches only the window minus that interval, with
inclusive bounds at the seams (messages sharing the boundary second are fetched again and deduplicated by id),
so an unchanged channel costs a request or two per chat instead of its whole history (SPEC 6.7 still holds: the
union of what is stored is exactly what one clean import of the same messages would store).

A chat can also be left out of a plan altogether (`up_to_date`) when WAHA's chat list shows no message since its
coverage ends and nothing else that shapes its rows changed. Its coverage then stays where it was, so a later plan
checks the same gap again: trusting the chat list can delay a message, never drop it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Span = tuple[int | None, int]  # (from, to), inclusive; from None = unbounded below


@dataclass(frozen=True)
class Coverage:
    span: Span
    has_messages: bool
    fingerprint: str | None = None  # what the chat's last commit was computed from (planning.chat_fingerprint)


def missing_ranges(window: Span, covered: Span | None) -> list[Span]:
    """The parts of `window` outside `covered`, each inclusive of the seam second."""
    start, end = window
    if covered is None:
        return [window]
    cov_from, cov_to = covered
    ranges: list[Span] = []
    if cov_from is not None and (start is None or start < cov_from):
        ranges.append((start, min(cov_from, end)))
    if end > cov_to:
        ranges.append((cov_to if start is None else max(cov_to, start), end))
    return ranges


def extend_coverage(window: Span, covered: Span | None) -> Span:
    """Coverage after importing `window`'s missing ranges: their union, or the window alone when they are
    disjoint (the older span is then forgotten, which only costs a re-fetch later, never a lost message)."""
    if covered is None:
        return window
    start, end = window
    cov_from, cov_to = covered
    disjoint = (start is not None and start > cov_to) or (cov_from is not None and end < cov_from)
    if disjoint:
        return window
    lower = None if start is None or cov_from is None else min(start, cov_from)
    return lower, max(end, cov_to)


def up_to_date(window: Span, covered: Coverage | None, last_message_at: int | None, fingerprint: str) -> bool:
    """Nothing of this chat can change by importing `window`: the part of it not covered lies after the coverage,
    WAHA lists the chat's last message strictly before the coverage ends (a message in the seam second could have
    arrived after that import), and the chat was last committed from the same identity and timeout."""
    if covered is None or last_message_at is None or covered.fingerprint != fingerprint:
        return False
    cov_to = covered.span[1]
    return last_message_at < cov_to and all(start is not None and start >= cov_to
                                           for start, _ in missing_ranges(window, covered.span))


Read = tuple[Span, int | None]  # a range asked of WAHA and how far it was proven read (None: not at all)


def proven_coverage(covered: Span | None, reads: Iterable[Read]) -> Span | None:
    """Coverage after a chunk read `reads`: the old span joined with the proven part `[gte, proven_to]` of each read
    range (SPEC 8: never over a span not read to the end). Pieces that touch (inclusive seconds) merge; when they
    do not, the one reaching furthest is kept (the other is only re-fetched later). None: nothing is covered."""
    pieces: list[tuple[int | None, int]] = [] if covered is None else [covered]
    for (start, end), proven_to in reads:
        if proven_to is not None and (start is None or proven_to >= start):
            pieces.append((start, min(proven_to, end)))
    if not pieces:
        return None
    pieces.sort(key=lambda p: (p[0] is not None, p[0] or 0))
    merged = [pieces[0]]
    for start, end in pieces[1:]:
        low, high = merged[-1]
        if start is None or start <= high + 1:
            merged[-1] = (low, max(high, end))
        else:
            merged.append((start, end))
    return max(merged, key=lambda p: p[1])
