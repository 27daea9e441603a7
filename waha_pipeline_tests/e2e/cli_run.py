"""Running the CLI in process and asking the simulator what the latest plan should have produced."""

from __future__ import annotations

from typing import Any

import pytest

from waha_pipeline.cli.main import main
from waha_pipeline_tests.crm_state import latest_plan, truth


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def expected(sim: Any, url: str) -> dict[str, Any]:
    """The simulator's truth for the latest plan's window, time and timeout."""
    plan = latest_plan(url)
    return truth(sim.base_url, "demo", window_start=plan["window_start"], window_end=plan["window_end"],
                 plan_time=plan["plan_time"], timeout_minutes=plan["timeout"])
