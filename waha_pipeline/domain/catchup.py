"""When a connected channel is imported again: the catch-up cadence as a pure function of times."""

from __future__ import annotations

CATCHUP, DEEP = "catchup", "deep"


def catchup_due(
    now: float,
    last_import: float | None,
    last_deep: float | None,
    every_seconds: float,
    deep_every_seconds: float,
) -> str | None:
    """CATCHUP, DEEP (a catch-up that re-reads every chat) or None (not yet, or catch-up is off).

    `last_import` is when the channel's latest plan was made, by whichever process (a CLI import counts, so a
    channel just imported by hand is not imported again at once); None means it has no plan yet. `last_deep` is
    when the last deep pass (or the first import, which reads every chat) started; None counts from
    `last_import`, so a channel first seen already imported waits one deep interval."""
    if every_seconds <= 0:
        return None
    if last_import is not None and now - last_import < every_seconds:
        return None
    if deep_every_seconds > 0:
        since = last_deep if last_deep is not None else last_import
        if since is None or now - since >= deep_every_seconds:
            return DEEP
    return CATCHUP
