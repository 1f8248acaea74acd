"""Table-driven planner cases: each file under cases/ is inventory + reports + now -> expected."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.plan_io import OMITTED_DEFAULTS, plan_json
from engine.planner import plan_fleet
from fleetbase.duration import parse_duration
from states.plan import Plan
from tests.planner.helpers import make_repo, make_reports

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _plan(case: dict[str, Any]) -> Plan:
    repo = make_repo(case["inventory"], case.get("releases"))
    now = case["now"]
    assert isinstance(now, datetime)
    filters = case.get("filter", {})
    return plan_fleet(
        repo,
        make_reports(case.get("reports", {})),
        now,
        stale_after=parse_duration(case.get("stale_after", "7d")),
        only_group=filters.get("group"),
        only_device=filters.get("device"),
    )


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    """The plan matches the case file's expected actions, reasons, waves and summary."""
    case = _load(path)
    expect = case["expect"]
    plan = _plan(case)
    by_device = {d.device: d for d in plan.devices}
    for device, wanted in expect.get("devices", {}).items():
        assert device in by_device, f"{device} missing from the plan"
        got = by_device[device].model_dump(mode="json")
        for key, value in wanted.items():
            if key == "reason_contains":
                assert value in got["reason"], (device, got["reason"])
            elif key == "steps":
                assert len(got["steps"]) == value, (device, got["steps"])
            else:
                assert got[key] == value, (device, key, got[key], value)
    for device in expect.get("absent", []):
        assert device not in by_device
    if "unmanaged" in expect:
        assert plan.unmanaged == expect["unmanaged"]
    if "unknown_reports" in expect:
        assert plan.unknown_reports == expect["unknown_reports"]
    for action, count in expect.get("summary", {}).items():
        assert plan.summary[action] == count, (action, plan.summary)
    if "releases" in expect:
        assert sorted(plan.releases) == expect["releases"]
    if "rollouts" in expect:
        assert [r.id for r in plan.rollouts] == expect["rollouts"]
    for rollout, count in expect.get("rollout_devices", {}).items():
        found = next(r for r in plan.rollouts if r.id == rollout)
        assert sum(w.devices for w in found.waves) == count


def test_every_case_round_trips_through_json() -> None:
    """A plan of every case serialises to JSON and validates back to an equal Plan."""
    for path in CASES:
        plan = _plan(_load(path))
        again = Plan.model_validate_json(plan.model_dump_json())
        assert again.model_dump(mode="json") == plan.model_dump(mode="json")


def test_plan_json_matches_pydantic() -> None:
    """The fast plan_json writes pydantic's document less the device fields at their default,
    and reads back to an equal plan."""
    for path in CASES:
        plan = _plan(_load(path))
        expected = json.loads(plan.model_dump_json())
        for device in expected["devices"]:
            for name, default in OMITTED_DEFAULTS.items():
                if device[name] == default:
                    del device[name]
        assert json.loads(plan_json(plan)) == expected
        assert json.loads(plan_json(plan, indent=True)) == expected
        assert Plan.model_validate_json(plan_json(plan)) == plan


def test_release_refs_point_into_repo() -> None:
    """A changing device's release is listed with repo-relative manifest, signature and hash."""
    plan = _plan(_load(Path(__file__).parent / "cases" / "every_action.yaml"))
    ref = plan.releases["3.0.1"]
    assert ref.manifest == "releases/3.0.1.yaml"
    assert ref.signature == "releases/3.0.1.yaml.sig"
    assert ref.artifacts == "artifacts/"
    assert len(ref.manifest_sha256) == 64


def test_steps_describe_the_transaction() -> None:
    """An update's steps are the seven transaction phases in order with sizes and versions."""
    plan = _plan(_load(Path(__file__).parent / "cases" / "every_action.yaml"))
    upd = next(d for d in plan.devices if d.device == "upd")
    names = [s.name.value for s in upd.steps]
    assert names == [
        "download",
        "verify",
        "backup",
        "swap",
        "restart",
        "confirm_heartbeat",
        "commit",
    ]
    details = {s.name.value: s.detail for s in upd.steps}
    assert details["download"] == "3 files, 12.4 KB"
    assert details["swap"] == "3.0.0 -> 3.0.1"
    assert details["backup"] == "keep 3.0.0 restorable"
    assert "heartbeat.json" in details["confirm_heartbeat"]


def test_stale_boundary() -> None:
    """A report exactly stale_after old is still fresh; one second older is blocked."""
    case = _load(Path(__file__).parent / "cases" / "every_action.yaml")
    now: datetime = case["now"]
    case["reports"] = {
        "upd": {
            "agent_version": "3.0.0",
            "platform": "linux",
            "last_seen": now - timedelta(days=7),
        },
        "same": {
            "agent_version": "3.0.0",
            "platform": "linux",
            "last_seen": now - timedelta(days=7, seconds=1),
        },
    }
    by_device = {d.device: d for d in _plan(case).devices}
    assert by_device["upd"].action == "update"
    assert by_device["same"].action == "blocked"
