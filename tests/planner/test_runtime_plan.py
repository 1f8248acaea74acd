"""Groups with ``runtime:``: each device's runtime plan and the group's runtime rollout."""

from __future__ import annotations

from datetime import timedelta

from engine.planner import plan_fleet
from fleetbase.version import Version
from states.plan import Action, Plan
from tests.planner.helpers import NOW, make_repo, make_reports

SEEN = NOW.isoformat()


def _plan(known: list[str] | None = None, **group: object) -> Plan:
    inventory = {
        "devices": {f"d{i}": {"platform": "linux", "site": "a"} for i in range(5)},
        "groups": {
            "lab": {
                "match": {"site": "a"},
                "agent": {"release": "3.0.0"},
                "runtime": {"release": "0.2.0"},
                "rollout": {"waves": [40, 100]},
                **group,
            }
        },
    }
    reports = make_reports(
        {
            "d0": {"agent_version": "3.0.0", "runtime_version": "0.1.0", "last_seen": SEEN},
            "d1": {"agent_version": "3.0.0", "runtime_version": "0.2.0", "last_seen": SEEN},
            "d2": {"agent_version": "3.0.0", "runtime_version": "0.3.0", "last_seen": SEEN},
            "d3": {"agent_version": "3.0.0", "last_seen": SEEN},
        }
    )
    return plan_fleet(
        make_repo(inventory),
        reports,
        NOW,
        stale_after=timedelta(days=1),
        runtime_releases=None if known is None else [Version(v) for v in known],
    )


def test_runtime_plans_are_apart_from_the_agent_plans() -> None:
    plan = _plan(["0.2.0"])
    by = {d.device: d for d in plan.runtime_devices}
    assert {d.component for d in plan.runtime_devices} == {"runtime"}
    assert {d.component for d in plan.devices} == {"agent"}
    assert (by["d0"].action, by["d0"].reason) == (Action.UPDATE, "runtime 0.1.0 -> 0.2.0")
    assert by["d1"].action is Action.NOOP
    assert by["d2"].action is Action.ROLLBACK
    assert by["d3"].action is Action.BLOCKED
    assert "no runtime reports" in by["d3"].reason
    assert by["d4"].action is Action.BLOCKED and "no report" in by["d4"].reason
    assert {d.rollout for d in plan.runtime_devices} == {"lab@runtime-0.2.0"}
    assert {d.wave for d in plan.runtime_devices} <= {0, 1}


def test_the_runtime_rollout_has_the_groups_waves() -> None:
    plan = _plan(["0.2.0"])
    (runtime,) = [r for r in plan.rollouts if r.component == "runtime"]
    assert runtime.id == "lab@runtime-0.2.0"
    assert runtime.release == Version("0.2.0")
    assert [w.percent for w in runtime.waves] == [40, 100]
    assert sum(w.devices for w in runtime.waves) == 5
    assert sum(w.changing for w in runtime.waves) == 2  # d0 (update) and d2 (older)
    assert [r.id for r in plan.rollouts if r.component == "agent"] == ["lab@3.0.0"]


def test_an_unknown_runtime_release_blocks_the_devices_that_would_move() -> None:
    plan = _plan([])
    by = {d.device: d for d in plan.runtime_devices}
    assert by["d0"].action is Action.BLOCKED
    assert "runtime release 0.2.0 has no bundles under runtime-releases/" in by["d0"].reason
    assert by["d1"].action is Action.NOOP  # already there


def test_a_plan_with_runtime_plans_round_trips_and_old_plans_still_parse() -> None:
    plan = _plan(["0.2.0"])
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again.model_dump(mode="json") == plan.model_dump(mode="json")
    old = plan.model_dump(mode="json")
    del old["runtime_devices"]
    for r in old["rollouts"]:
        del r["component"]
    for d in old["devices"]:
        del d["component"]
    parsed = Plan.model_validate(old)
    assert parsed.runtime_devices == []
    assert {r.component for r in parsed.rollouts} == {"agent"}
