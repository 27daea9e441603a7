"""Pins incremental fetching: the missing ranges plus the coverage always cover the window, seams inclusive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waha_pipeline.domain.coverage import Coverage, extend_coverage, missing_ranges, proven_coverage, up_to_date


@pytest.mark.parametrize(
    ("window", "covered", "ranges"),
    [
        ((100, 200), None, [(100, 200)]),
        ((100, 200), (100, 200), []),
        ((100, 300), (100, 200), [(200, 300)]),
        ((50, 200), (100, 200), [(50, 100)]),
        ((50, 300), (100, 200), [(50, 100), (200, 300)]),
        ((None, 300), (100, 200), [(None, 100), (200, 300)]),
        ((None, 300), (None, 200), [(200, 300)]),
        ((250, 300), (100, 200), [(250, 300)]),
        ((150, 300), (None, 200), [(200, 300)]),
    ],
    ids=["first-import", "unchanged", "newer", "older", "both-sides", "whole-history", "whole-history-again",
         "disjoint-later", "inside-unbounded"],
)
def test_missing_ranges(window, covered, ranges) -> None:
    assert missing_ranges(window, covered) == ranges


def _within(t: int, span) -> bool:
    return (span[0] is None or span[0] <= t) and t <= span[1]


spans = st.tuples(st.one_of(st.none(), st.integers(0, 100)), st.integers(0, 100)).filter(
    lambda s: s[0] is None or s[0] <= s[1]
)


@given(window=spans, covered=st.one_of(st.none(), spans), t=st.integers(-1, 101))
def test_every_second_of_the_window_is_fetched_or_already_covered(window, covered, t) -> None:
    if _within(t, window):
        fetched = any(_within(t, r) for r in missing_ranges(window, covered))
        assert fetched or (covered is not None and _within(t, covered))
        # and the new coverage vouches only for seconds that were covered or fetched
    new = extend_coverage(window, covered)
    if _within(t, new):
        assert _within(t, window) or (covered is not None and _within(t, covered))
    assert _within(window[1], new)


FP = "fingerprint"


@pytest.mark.parametrize(
    ("window", "covered", "last_message_at", "fingerprint", "expected"),
    [
        ((150, 300), Coverage((100, 200), True, FP), 199, FP, True),
        ((None, 300), Coverage((None, 200), True, FP), 150, FP, True),
        ((150, 200), Coverage((100, 200), True, FP), 150, FP, True),
        ((150, 300), Coverage((100, 200), True, FP), 200, FP, False),
        ((150, 300), Coverage((100, 200), True, FP), 250, FP, False),
        ((50, 300), Coverage((100, 200), True, FP), 150, FP, False),
        ((None, 300), Coverage((100, 200), True, FP), 150, FP, False),
        ((150, 300), Coverage((100, 200), True, "other"), 150, FP, False),
        ((150, 300), Coverage((100, 200), True, None), 150, FP, False),
        ((150, 300), Coverage((100, 200), True, FP), None, FP, False),
        ((150, 300), None, 150, FP, False),
    ],
    ids=["later-window", "whole-history", "inside", "message-in-seam-second", "newer-message", "older-part-missing",
         "unbounded-below-missing", "identity-changed", "no-fingerprint-yet", "no-chat-timestamp", "never-imported"],
)
def test_up_to_date(window, covered, last_message_at, fingerprint, expected) -> None:
    assert up_to_date(window, covered, last_message_at, fingerprint) is expected


@given(window=spans, covered=spans, last=st.integers(0, 100), t=st.integers(0, 100))
def test_up_to_date_only_when_every_message_of_the_window_is_stored(window, covered, last, t) -> None:
    """A message at `t` (the chat list says none is later than `last`) is either stored or makes the chat due."""
    if t <= last and _within(t, window) and up_to_date(window, Coverage(covered, True, FP), last, FP):
        assert _within(t, covered)


@pytest.mark.parametrize(
    ("covered", "reads", "result"),
    [
        (None, [((100, 200), 200)], (100, 200)),
        (None, [((100, 200), 150)], (100, 150)),
        (None, [((100, 200), None)], None),
        ((50, 100), [((100, 200), None)], (50, 100)),
        ((50, 100), [((100, 200), 140)], (50, 140)),
        ((50, 100), [((20, 50), 50), ((100, 200), 200)], (20, 200)),
        ((50, 100), [((20, 50), 30), ((100, 200), 200)], (50, 200)),
        ((None, 100), [((100, 200), 300)], (None, 200)),
        ((50, 100), [((150, 200), 200)], (150, 200)),
        (None, [((100, 200), 90)], None),
    ],
    ids=["proven", "to-newest-read", "nothing-proven", "unproven-keeps-old", "extends-old", "both-sides",
         "older-gap-kept-out", "clipped-to-lte", "disjoint-newer-wins", "proven-before-range"],
)
def test_proven_coverage(covered, reads, result) -> None:
    assert proven_coverage(covered, reads) == result


@given(
    covered=st.one_of(st.none(), st.tuples(st.integers(0, 50), st.integers(50, 100))),
    proven=st.lists(st.one_of(st.none(), st.integers(0, 300)), min_size=1, max_size=3),
)
def test_proven_coverage_never_claims_an_unproven_second(covered, proven) -> None:
    """Every second of the result lies in the old coverage or in the proven part of a read."""
    reads = [((100 * k, 100 * k + 100), p) for k, p in enumerate(proven)]
    span = proven_coverage(covered, reads)
    if span is None:
        assert covered is None
        return
    low = span[0] if span[0] is not None else 0
    ok = set(range(covered[0], covered[1] + 1)) if covered else set()
    for (start, end), to in reads:
        if to is not None:
            ok |= set(range(start, min(to, end) + 1))
    assert set(range(low, span[1] + 1)) <= ok
