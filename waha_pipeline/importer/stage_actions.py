"""Decide, per chunk, which stages to compute and which to read back from their persisted output.

Pure: given the selected stages and the stages whose output is on disk, return one action per stage.
A selected stage is always computed (that is what re-materializing means); an unselected stage is read
from disk when a later selected stage needs it, and computed silently only when its file is missing.
"""

from __future__ import annotations

from enum import Enum

STAGES: tuple[str, ...] = (
    "raw_chat_list",
    "fetched_messages",
    "resolved_contacts",
    "session_batch",
    "committed_rows",
)


class Action(str, Enum):
    EMIT = "emit"  # compute, persist and report a materialization
    COMPUTE = "compute"  # compute and persist, no materialization (an input that was missing)
    LOAD = "load"  # read the persisted output
    SKIP = "skip"  # not needed


def stage_actions(selected: set[str], persisted: set[str]) -> dict[str, Action]:
    unknown = selected - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages: {sorted(unknown)}")
    actions = {stage: Action.SKIP for stage in STAGES}
    needed = False  # does a later stage need this stage's output?
    for stage in reversed(STAGES):
        if stage in selected:
            actions[stage] = Action.EMIT
            needed = True
        elif needed:
            if stage in persisted:
                actions[stage] = Action.LOAD
                needed = False
            else:
                actions[stage] = Action.COMPUTE
    return actions
