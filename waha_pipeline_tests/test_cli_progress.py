"""The import's progress: what counts as done, the line's numbers and ETA, when a plain line is due, and what
the reporter writes on a terminal and elsewhere (a fake clock and ledger rows; no threads, no sleeping)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from waha_pipeline.cli.progress import (
    PLAIN_EVERY_S,
    ProgressReporter,
    Tally,
    baseline_of,
    clock_text,
    plain_line_due,
    progress_line,
    tally,
)


@dataclass(frozen=True)
class Row:
    chunk_key: str
    status: str
    attempts: int = 0
    messages: int | None = 0


def test_tally_counts_what_changed_in_this_run_only() -> None:
    before = [Row("a", "pending"), Row("b", "failed", 1), Row("c", "committed", 1, 7), Row("d", "failed", 2)]
    base = baseline_of(before)
    now = [Row("a", "committed", 1, 10), Row("b", "committed", 2, 5), Row("c", "committed", 1, 7),
           Row("d", "failed", 2), Row("x", "committed", 1, 99)]
    t = tally(now, ["a", "b", "d"], base)
    assert t == Tally(total=3, committed=2, failed=0, messages=15)  # d not yet re-attempted, x not run here
    again = tally([Row("d", "failed", 3)], ["a", "b", "d"], base)
    assert again.failed == 1 and again.done == 1


def test_a_pending_chunk_that_fails_counts_as_failed() -> None:
    base = baseline_of([Row("a", "pending"), Row("b", "pending")])
    assert tally([Row("a", "failed", 1), Row("b", "pending", 1)], ["a", "b"], base) == Tally(2, 0, 1, 0)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (247, "4:07"), (3909, "1:05:09")])
def test_clock_text(seconds: float, text: str) -> None:
    assert clock_text(seconds) == text


def test_progress_line_rate_and_eta() -> None:
    assert progress_line(Tally(40, 0, 0, 0), 0.0) == "chunks 0/40, 0 messages committed, 0 msg/s, ETA -"
    line = progress_line(Tally(40, 9, 1, 3400), 20.0)
    assert line == "chunks 10/40 (1 failed), 3,400 messages committed, 170 msg/s, ETA 1:00"
    assert progress_line(Tally(40, 40, 0, 12000), 80.0).endswith("150 msg/s, done")


def test_plain_line_due_by_time_or_by_a_tenth_of_the_chunks() -> None:
    t = Tally(total=40, committed=3, failed=0, messages=0)
    assert not plain_line_due(last_at=100.0, last_done=0, now=100.0 + PLAIN_EVERY_S - 0.1, t=t)
    assert plain_line_due(last_at=100.0, last_done=0, now=100.0 + PLAIN_EVERY_S, t=t)
    assert plain_line_due(last_at=100.0, last_done=0, now=101.0, t=Tally(40, 4, 0, 0))  # 4 = 10% of 40
    assert plain_line_due(last_at=100.0, last_done=0, now=101.0, t=Tally(5, 1, 0, 0))  # at least every chunk


class Ledger:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self) -> list[Row]:
        return list(self.rows)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reporter_prints_plain_lines_when_due_and_a_final_one() -> None:
    keys = [f"k{i:02d}" for i in range(20)]
    ledger, clock, out = Ledger([Row(k, "pending") for k in keys]), Clock(), io.StringIO()
    reporter = ProgressReporter(ledger, keys, out, in_place=False, clock=clock)
    reporter.start()
    ledger.rows[0] = Row("k00", "committed", 1, 50)
    clock.now += 1
    reporter.tick()  # 1 of 20 done: not yet a tenth, not yet PLAIN_EVERY_S
    ledger.rows[1] = Row("k01", "failed", 1)
    clock.now += 1
    reporter.tick()  # 2 of 20: a tenth
    clock.now += PLAIN_EVERY_S
    reporter.tick()  # time
    ledger.rows = [Row(k, "committed", 1, 50) for k in keys]
    clock.now += 1
    reporter.stop()
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress: chunks 0/20, 0 messages committed, 0 msg/s, ETA -",
        "progress: chunks 2/20 (1 failed), 50 messages committed, 25 msg/s, ETA 0:18",
        "progress: chunks 2/20 (1 failed), 50 messages committed, 4 msg/s, ETA 1:48",
        "progress: chunks 20/20, 1,000 messages committed, 77 msg/s, done",
    ]


def test_reporter_on_a_terminal_rewrites_one_line_and_ends_it() -> None:
    keys = ["a", "b"]
    ledger, clock, out = Ledger([Row("a", "pending"), Row("b", "pending")]), Clock(), io.StringIO()
    reporter = ProgressReporter(ledger, keys, out, in_place=True, clock=clock)
    reporter.start()
    ledger.rows[0] = Row("a", "committed", 1, 10)
    clock.now += 2
    reporter.tick()
    reporter.stop()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = [f.removesuffix("\x1b[K") for f in text.rstrip("\n").split("\r")[1:]]
    assert frames == ["progress: chunks 0/2, 0 messages committed, 0 msg/s, ETA -",
                      "progress: chunks 1/2, 10 messages committed, 5 msg/s, ETA 0:02",
                      "progress: chunks 1/2, 10 messages committed, 5 msg/s, ETA 0:02"]


def test_a_failing_ledger_read_is_skipped() -> None:
    def broken() -> list[Row]:
        raise OSError("CRM away")

    out = io.StringIO()
    reporter = ProgressReporter(broken, ["a"], out, in_place=False, clock=Clock())
    reporter.start()
    reporter.stop()
    assert out.getvalue() == ""


def test_a_stream_that_is_not_a_terminal_gets_plain_lines() -> None:
    assert ProgressReporter(Ledger([]), [], io.StringIO()).in_place is False
