"""The catch-up cadence: when a connected channel is imported again, and when that import reads every chat."""

from __future__ import annotations

import pytest

from waha_pipeline.domain.catchup import CATCHUP, DEEP, catchup_due
from waha_pipeline.errors import ConfigError
from waha_pipeline.settings import CatchUp

EVERY, DEEP_EVERY = 900.0, 86_400.0


@pytest.mark.parametrize(
    ("now", "last_import", "last_deep", "want"),
    [
        (1_000, 1_000 - 899, 0, None),  # a cadence has not passed since the latest plan
        (1_000, 1_000 - 900, 1_000 - 900, CATCHUP),
        (100_000, 100_000 - 900, 100_000 - 86_399, CATCHUP),
        (100_000, 100_000 - 900, 100_000 - 86_400, DEEP),
        (100_000, 100_000 - 86_400, None, DEEP),  # no deep pass known: counted from the latest plan
        (100_000, 100_000 - 900, None, CATCHUP),
        (100_000, None, None, DEEP),  # never planned: nothing is covered, every chat is read anyway
    ],
)
def test_catchup_due(now: float, last_import: float | None, last_deep: float | None, want: str | None) -> None:
    assert catchup_due(now, last_import, last_deep, EVERY, DEEP_EVERY) == want


def test_zero_turns_catch_up_or_its_deep_pass_off() -> None:
    assert catchup_due(10**9, 0, 0, 0, DEEP_EVERY) is None
    assert catchup_due(10**9, 0, 0, EVERY, 0) == CATCHUP


def test_cadence_from_the_environment() -> None:
    assert CatchUp.from_env({}) == CatchUp(every_seconds=900, deep_every_seconds=86_400)
    assert CatchUp.from_env({"WAHA_CATCHUP_MINUTES": "0.5", "WAHA_CATCHUP_DEEP_HOURS": "0"}) == CatchUp(30, 0)
    assert not CatchUp.from_env({"WAHA_CATCHUP_MINUTES": "0"}).enabled
    with pytest.raises(ConfigError, match=r"^WAHA_CATCHUP_MINUTES must be a number >= 0 \(0 turns it off\), got '-1'$"):
        CatchUp.from_env({"WAHA_CATCHUP_MINUTES": "-1"})
    with pytest.raises(ConfigError, match="^WAHA_CATCHUP_DEEP_HOURS must be a number"):
        CatchUp.from_env({"WAHA_CATCHUP_DEEP_HOURS": "daily"})
