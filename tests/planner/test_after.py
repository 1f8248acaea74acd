"""rollout.after reaches the plan: each rollout lists the groups it waits for."""

from __future__ import annotations

import json
from datetime import timedelta

from engine.plan_io import plan_json
from engine.plan_render import render_plan
from engine.planner import plan_fleet
from states.plan import Plan
from tests.planner.helpers import NOW, make_repo, make_reports

INVENTORY = {
    "devices": {
        "it-1": {"platform": "linux", "tags": ["internal"]},
        "pos-1": {"platform": "windows"},
        "pos-2": {"platform": "linux"},
    },
    "groups": {
        "canary": {
            "match": {"tags": "internal"},
            "priority": 100,
            "agent": {"release": "3.0.1"},
            "rollout": {"waves": [100]},
        },
        "fleet": {
            "match": {"platform": ["linux", "windows"]},
            "agent": {"release": "3.0.1"},
            "rollout": {"waves": [50, 100], "after": ["canary"]},
        },
    },
}
REPORTS = {
    d: {"agent_version": "3.0.0", "platform": p, "last_seen": "2026-11-27T10:00:00Z"}
    for d, p in (("it-1", "linux"), ("pos-1", "windows"), ("pos-2", "linux"))
}


def _plan() -> Plan:
    return plan_fleet(
        make_repo(INVENTORY), make_reports(REPORTS), NOW, stale_after=timedelta(days=7)
    )


def test_plan_json_lists_after_per_rollout() -> None:
    """A gated rollout has `after` with the group names; others an empty list."""
    data = json.loads(plan_json(_plan()))
    after = {r["id"]: r["after"] for r in data["rollouts"]}
    assert after == {"canary@3.0.1": [], "fleet@3.0.1": ["canary"]}
    fleet = next(r for r in data["rollouts"] if r["id"] == "fleet@3.0.1")
    assert fleet["policy"]["after"] == ["canary"]


def test_plan_without_after_reads_back() -> None:
    """A saved plan from before rollout.after (no `after` key) still reads, with none."""
    data = json.loads(plan_json(_plan()))
    for r in data["rollouts"]:
        del r["after"]
    plan = Plan.model_validate(data)
    assert [r.after for r in plan.rollouts] == [[], []]


def test_human_output_names_after_in_the_header() -> None:
    """The rollout's header line says which groups it waits for."""
    lines = render_plan(_plan()).splitlines()
    assert any(line.startswith("fleet@3.0.1  after canary  (waves 50/100%") for line in lines)
    canary = next(line for line in lines if line.startswith("canary@3.0.1"))
    assert "after" not in canary
