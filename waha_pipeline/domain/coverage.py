"""Which part of a plan window a chat still needs from WAHA, given the span its stored history already covers.

A chat's coverage is one closed interval [covered_from, covered_to] of Unix seconds (covered_from None = since
the beginning) whose messages are all in the CRM. A re-import fetches only the window minus that interval, with
inclusive bounds at the seams (messages sharing the boundary second are fetched again and deduplicated by id),
so an unchanged channel costs a request or two per chat instead of its whole history (SPEC 6.7 still holds: the
union of what is stored is exactly what one clean import of the same messages would store).
"""

from __future__ import annotations

Span = tuple[int | None, int]  # (from, to), inclusive; from None = unbounded below


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
