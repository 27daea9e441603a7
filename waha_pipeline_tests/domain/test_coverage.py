"""Pins incremental fetching: the missing ranges plus the coverage always cover the window, seams inclusive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waha_pipeline.domain.coverage import extend_coverage, missing_ranges


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
