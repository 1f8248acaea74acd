"""The human `engine plan` output: summary line, rollout sections, limits, colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.plan_render import render_plan, summary_line
from engine.planner import plan_fleet
from fleetbase.duration import parse_duration
from states.plan import Plan
from tests.planner.helpers import NOW, make_repo, make_reports


def _every_action() -> Plan:
    case: dict[str, Any] = yaml.safe_load(
        (Path(__file__).parent / "cases" / "every_action.yaml").read_text()
    )
    return plan_fleet(
        make_repo(case["inventory"], case["releases"]),
        make_reports(case["reports"]),
        case["now"],
        stale_after=parse_duration(case["stale_after"]),
    )


def test_summary_line_counts_every_action() -> None:
    """The first line counts each action in a fixed order, then the unmanaged devices."""
    assert summary_line(_every_action()) == (
        "Plan: 1 to update, 1 to install, 1 to adopt, 1 to roll back, 1 unchanged, 1 pinned, "
        "4 blocked; "
        "1 unmanaged."
    )


def test_devices_carry_their_symbols_and_reasons() -> None:
    """Each device line has its action's symbol, its id and its reason; unchanged ones hide."""
    text = render_plan(_every_action())
    assert "    ~ upd " in text
    assert "    + inst " in text
    assert "    @ field " in text and "3.0.1 in place, no runtime yet: adopt it" in text
    assert "    < back " in text
    assert "    ! stale " in text and "no report since 2026-11-01T10:00Z" in text
    assert "    = held " in text and "pinned to 3.0.0; group linux-prod wants 3.0.1" in text
    assert " same " not in text
    assert "(1 unchanged not listed)" in text
    assert "Unmanaged (no pin and no group with a release): loner" in text
    assert "Reports from devices not in the inventory: ghost" in text
    assert "\x1b[" not in text


def test_verbose_lists_unchanged_and_colour_is_optional() -> None:
    """--verbose lists unchanged devices too; colour adds ANSI codes only when asked."""
    plan = _every_action()
    verbose = render_plan(plan, verbose=True)
    assert any(
        " same " in line and "noop" in line and "already on 3.0.1" in line
        for line in verbose.splitlines()
    )
    coloured = render_plan(plan, colour=True)
    assert "\x1b[33m~\x1b[0m upd" in coloured


def test_limit_cuts_long_lists() -> None:
    """Without --verbose a rollout lists at most `limit` changing devices and says how many more."""
    names = [f"dev-{i:03d}" for i in range(25)]
    inventory = {
        "devices": {n: {"platform": "linux"} for n in names},
        "groups": {"g": {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"}}},
    }
    reports = make_reports(
        {n: {"agent_version": "3.0.0", "platform": "linux", "last_seen": NOW} for n in names}
    )
    plan = plan_fleet(make_repo(inventory), reports, NOW, stale_after=parse_duration("7d"))
    text = render_plan(plan, limit=10)
    assert text.count("    ~ dev-") == 10
    assert "... 15 more; --verbose lists every device" in text
    assert render_plan(plan, verbose=True).count("    ~ dev-") == 25
