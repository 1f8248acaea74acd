"""The plan blocks a device whose runtime reported what it can do and cannot take what its
rollout would offer: a runtime release (``runtime_update``) or managed config (``config``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from engine.capabilities import NOT_SUPERVISED_REASON, can_update_runtime
from engine.planner import plan_fleet
from fleetbase.version import Version
from states.plan import Action, DevicePlan, Plan
from states.protocol import FEATURE_CONFIG, FEATURE_RUNTIME_UPDATE
from tests.planner.helpers import NOW, make_repo, make_reports

SEEN = NOW.isoformat()
DIGEST = "sha256:" + "c" * 64
OTHER = "sha256:" + "d" * 64

#: Each device's report: agent 3.0.0, runtime 0.1.0, and what it says it can do.
FEATURES: dict[str, list[str] | None] = {
    "never-said": None,  # an imported report, or one from before the server kept features
    "bare": [],  # a runtime older than managed config
    "config-only": [FEATURE_CONFIG],  # not under the supervisor
    "supervised": [FEATURE_CONFIG, FEATURE_RUNTIME_UPDATE],
}


def _reports(agent: str = "3.0.0", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for device, features in FEATURES.items():
        body: dict[str, Any] = {
            "agent_version": agent,
            "runtime_version": "0.1.0",
            "last_seen": SEEN,
            **extra,
        }
        if features is not None:
            body["features"] = features
        out[device] = body
    return make_reports(out)


def _inventory(**group: Any) -> dict[str, Any]:
    return {
        "devices": {d: {"platform": "linux", "site": "a"} for d in FEATURES},
        "groups": {"lab": {"match": {"site": "a"}, "rollout": {"waves": [100]}, **group}},
    }


def _by_device(plans: list[DevicePlan]) -> dict[str, tuple[Action, str]]:
    return {p.device: (p.action, p.reason) for p in plans}


def _runtime_plan(runtime: str) -> Plan:
    inventory = _inventory(agent={"release": "3.0.0"}, runtime={"release": runtime})
    return plan_fleet(
        make_repo(inventory),
        _reports(),
        NOW,
        stale_after=timedelta(days=1),
        runtime_releases=[Version(runtime)],
    )


def test_a_runtime_rollout_blocks_runtimes_that_cannot_update_themselves() -> None:
    """Only the runtime that says it runs under the supervisor is planned to move; a runtime
    that never said keeps today's plan (its refusal at the offer is the safety net)."""
    by = _by_device(_runtime_plan("0.2.0").runtime_devices)
    assert by["supervised"] == (Action.UPDATE, "runtime 0.1.0 -> 0.2.0")
    assert by["never-said"] == (Action.UPDATE, "runtime 0.1.0 -> 0.2.0")
    assert by["config-only"] == (Action.BLOCKED, NOT_SUPERVISED_REASON)
    assert by["bare"] == (Action.BLOCKED, NOT_SUPERVISED_REASON)
    assert "reinstall it with the field installer" in NOT_SUPERVISED_REASON


def test_the_runtime_rollout_counts_blocked_devices_as_not_changing() -> None:
    plan = _runtime_plan("0.2.0")
    (rollout,) = [r for r in plan.rollouts if r.component == "runtime"]
    assert sum(w.devices for w in rollout.waves) == 4
    assert sum(w.changing for w in rollout.waves) == 2  # supervised, never-said


def test_a_device_already_on_the_runtime_release_is_not_blocked() -> None:
    by = _by_device(_runtime_plan("0.1.0").runtime_devices)
    assert {action for action, _ in by.values()} == {Action.NOOP}


def _config_plan(agent: str, group_release: str, digests: dict[str, str | None]) -> Plan:
    return plan_fleet(
        make_repo(_inventory(agent={"release": group_release})),
        _reports(agent, config_digest=OTHER),
        NOW,
        stale_after=timedelta(days=1),
        configs=lambda device, _release: digests.get(device, DIGEST),
    )


def test_an_update_carrying_config_blocks_runtimes_without_the_config_feature() -> None:
    by = _by_device(_config_plan("3.0.0", "3.0.1", {}).devices)
    assert by["supervised"][0] is Action.UPDATE
    assert by["config-only"][0] is Action.UPDATE
    assert by["never-said"][0] is Action.UPDATE
    action, reason = by["bare"]
    assert action is Action.BLOCKED
    assert reason == (
        "runtime 0.1.0 cannot install managed config files and flags (it does not report "
        "'config'): reinstall a newer runtime with the field installer (docs/install.md) first"
    )


def test_a_reconfigure_blocks_runtimes_without_the_config_feature() -> None:
    by = _by_device(_config_plan("3.0.1", "3.0.1", {}).devices)
    assert by["supervised"][0] is Action.RECONFIGURE
    assert by["never-said"][0] is Action.RECONFIGURE
    assert by["bare"][0] is Action.BLOCKED
    assert "cannot install managed config" in by["bare"][1]


def test_an_update_without_config_is_not_blocked_by_the_config_feature() -> None:
    """A release that manages no config (digest None) reaches runtimes that cannot install it."""
    digests: dict[str, str | None] = dict.fromkeys(FEATURES)
    by = _by_device(_config_plan("3.0.0", "3.0.1", digests).devices)
    assert {action for action, _ in by.values()} == {Action.UPDATE}


def test_blocked_devices_do_not_count_as_changing_in_the_agent_rollout() -> None:
    plan = _config_plan("3.0.0", "3.0.1", {})
    assert plan.summary["blocked"] == 1
    assert plan.summary["update"] == 3
    (rollout,) = plan.rollouts
    assert sum(w.changing for w in rollout.waves) == 3


def test_can_update_runtime_says_none_when_the_runtime_never_said() -> None:
    reports = _reports()
    assert can_update_runtime(reports["supervised"]) is True
    assert can_update_runtime(reports["config-only"]) is False
    assert can_update_runtime(reports["never-said"]) is None
    assert can_update_runtime(None) is None
