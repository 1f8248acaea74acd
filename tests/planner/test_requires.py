"""A release's requires: blocks the devices that lack what it needs, each with its reason."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from engine.plan_io import plan_json
from engine.plan_render import render_plan
from engine.planner import plan_fleet
from engine.requires import reported_version, runtime_satisfies
from states.plan import Action, DevicePlan, Plan
from tests.planner.helpers import NOW, make_repo, make_reports

REQUIRES = {
    "runtime": ">=0.2.0",
    "python": ">=3.11,<3.14",
    "os": {"linux": ">=5.10", "windows": ">=10.0.19041"},
    "components": {"openssl": ">=3.0"},
}
#: Facts that meet REQUIRES on linux.
GOOD: dict[str, Any] = {
    "runtime_version": "0.2.0",
    "python_version": "3.11.7",
    "os_version": "6.1.0-18-amd64",
    "components": {"openssl": "3.0.19", "glibc": "2.36"},
}
SEEN = "2026-11-27T11:00:00Z"


def _plan(
    facts: dict[str, dict[str, Any]],
    platforms: dict[str, str] | None = None,
    runtime: str | None = None,
) -> Plan:
    platforms = platforms or {}
    group: dict[str, Any] = {
        "match": {"platform": ["linux", "windows", "macos"]},
        "agent": {"release": "3.1.0"},
    }
    if runtime is not None:
        group["runtime"] = {"release": runtime}
    inventory = {
        "devices": {d: {"platform": platforms.get(d, "linux")} for d in facts},
        "groups": {"fleet": group},
    }
    repo = make_repo(inventory, {"3.0.0": {}, "3.1.0": {"requires": REQUIRES}})
    reports = make_reports(
        {
            d: {
                "agent_version": "3.0.0",
                "platform": platforms.get(d, "linux"),
                "last_seen": SEEN,
                **body,
            }
            for d, body in facts.items()
        }
    )
    return plan_fleet(repo, reports, NOW, stale_after=timedelta(days=7))


def _device(plan: Plan, name: str) -> DevicePlan:
    return next(d for d in plan.devices if d.device == name)


def test_device_meeting_every_requirement_updates() -> None:
    """Facts inside every range: the update goes ahead as without requires:."""
    d = _device(_plan({"ok": GOOD}), "ok")
    assert (d.action, d.awaits_runtime) == (Action.UPDATE, None)
    assert d.steps


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"python_version": "3.10.12"}, "needs python >=3.11,<3.14, has 3.10.12"),
        ({"python_version": "3.14.0"}, "needs python >=3.11,<3.14, has 3.14.0"),
        ({"os_version": "5.4.0-150-generic"}, "needs linux >=5.10, has 5.4.0-150-generic"),
        ({"components": {"openssl": "1.1.1w"}}, "needs openssl >=3.0, has 1.1.1w"),
        (
            {"python_version": None},
            "needs python >=3.11,<3.14, but the runtime did not report its python version",
        ),
        (
            {"os_version": None},
            "needs linux >=5.10, but the runtime did not report its os version",
        ),
        (
            {"components": None},
            "needs openssl >=3.0, but the runtime did not report its components",
        ),
        (
            {"components": {"glibc": "2.36"}},
            "needs openssl >=3.0, but the runtime did not report component openssl",
        ),
        (
            {"os_version": "unknown"},
            "needs linux >=5.10, but the runtime reported 'unknown', which is not a version",
        ),
    ],
)
def test_lacking_device_is_blocked_with_the_reason(change: dict[str, Any], reason: str) -> None:
    """Each requirement a device does not meet, or cannot be checked, blocks it: never allowed
    silently. Only a too old runtime lets it wait (see below)."""
    d = _device(_plan({"dev": {**GOOD, **change}}), "dev")
    assert d.action is Action.BLOCKED
    assert d.reason == f"release 3.1.0 {reason}"
    assert d.awaits_runtime is None
    assert d.steps == []


def test_runtime_too_old_alone_waits_for_the_runtime() -> None:
    """A device lacking only a newer runtime is blocked, marked to wait for it."""
    d = _device(_plan({"old": {**GOOD, "runtime_version": "0.1.0"}}), "old")
    assert d.action is Action.BLOCKED
    assert d.reason == (
        "release 3.1.0 needs runtime >=0.2.0, has 0.1.0; waits in the rollout until its "
        "runtime reports a version that meets it"
    )
    assert d.awaits_runtime == ">=0.2.0"


def test_waiting_device_names_the_runtime_rollout_of_the_same_plan() -> None:
    """The group also moves its runtime: the agent update waits, and its reason names the
    runtime release (and rollout) that will meet the requirement; a runtime release that
    would not meet it is not named."""
    old = {**GOOD, "runtime_version": "0.1.0"}
    d = _device(_plan({"old": old}, runtime="0.2.0"), "old")
    assert (d.action, d.awaits_runtime) == (Action.BLOCKED, ">=0.2.0")
    assert d.reason == (
        "release 3.1.0 needs runtime >=0.2.0, has 0.1.0; "
        "waits for runtime 0.2.0 (rollout fleet@runtime-0.2.0)"
    )
    short = _device(_plan({"old": {**old, "runtime_version": "0.0.9"}}, runtime="0.1.0"), "old")
    assert short.reason.endswith("waits in the rollout until its runtime reports a version "
                                 "that meets it")  # fmt: skip


def test_several_lacks_are_all_named_and_do_not_wait() -> None:
    """A too old runtime with another lack: both reasons, and no waiting (a newer runtime
    would not be enough)."""
    d = _device(
        _plan({"dev": {**GOOD, "runtime_version": "0.1.0", "python_version": "3.9"}}), "dev"
    )
    assert d.reason == (
        "release 3.1.0 needs runtime >=0.2.0, has 0.1.0; needs python >=3.11,<3.14, has 3.9"
    )
    assert d.awaits_runtime is None


def test_os_requirement_applies_to_its_platform_only() -> None:
    """macos has no OS requirement here; windows compares the build version."""
    plan = _plan(
        {
            "mac": {**GOOD, "os_version": "12.0"},
            "win-old": {**GOOD, "os_version": "10.0.17763"},
            "win-new": {**GOOD, "os_version": "10.0.19045"},
        },
        {"mac": "macos", "win-old": "windows", "win-new": "windows"},
    )
    assert _device(plan, "mac").action is Action.UPDATE
    assert _device(plan, "win-new").action is Action.UPDATE
    old = _device(plan, "win-old")
    assert old.reason == "release 3.1.0 needs windows >=10.0.19041, has 10.0.17763"


def test_device_already_on_the_release_is_not_blocked() -> None:
    """Requirements gate a change; a device already running the release stays noop."""
    inventory = {
        "devices": {"dev": {"platform": "linux"}},
        "groups": {"fleet": {"match": {"platform": "linux"}, "agent": {"release": "3.1.0"}}},
    }
    repo = make_repo(inventory, {"3.1.0": {"requires": REQUIRES}})
    reports = make_reports(
        {
            "dev": {
                "agent_version": "3.1.0",
                "platform": "linux",
                "last_seen": SEEN,
                **GOOD,
                "python_version": "3.9",
            }
        }
    )
    plan = plan_fleet(repo, reports, NOW, stale_after=timedelta(days=7))
    assert plan.devices[0].action is Action.NOOP


def test_plan_output_and_saved_plan() -> None:
    """The reason shows in `engine plan` output and the summary counts the device blocked; a
    saved plan keeps awaits_runtime, and a plan saved before it existed still reads."""
    plan = _plan({"ok": GOOD, "old": {**GOOD, "runtime_version": "0.1.0"}})
    assert plan.summary["blocked"] == 1
    assert plan.summary["update"] == 1
    text = render_plan(plan, colour=False, verbose=True)
    assert text.startswith(
        "Plan: 1 to update, 0 to install, 0 to roll back, 0 unchanged, 0 pinned, "
        "1 blocked (1 waiting for their runtime); 0 unmanaged."
    )
    assert "needs runtime >=0.2.0, has 0.1.0" in text
    data = json.loads(plan_json(plan))
    by_device = {d["device"]: d for d in data["devices"]}
    assert by_device["old"]["awaits_runtime"] == ">=0.2.0"
    assert Plan.model_validate(data) == plan
    assert "awaits_runtime" not in by_device["ok"]  # null: left out of the JSON
    for d in data["devices"]:
        d.pop("awaits_runtime", None)
    assert Plan.model_validate(data).devices[0].awaits_runtime is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.2.0", "0.2.0"),
        ("6.1.0-18-amd64", "6.1.0"),
        ("1.1.1w", "1.1.1"),
        ("10.0.19045", "10.0.19045"),
        ("3.13.0rc1", "3.13.0rc1"),
        ("unknown", None),
    ],
)
def test_reported_version(text: str, expected: str | None) -> None:
    """Reported text is compared as packaging reads it, else by its leading numbers."""
    found = reported_version(text)
    assert (None if found is None else str(found)) == expected


def test_runtime_satisfies() -> None:
    """The controller's check: a reported runtime version inside the range, nothing else."""
    assert runtime_satisfies(">=0.2.0", "0.2.0")
    assert runtime_satisfies(">=0.2.0", "0.3.0a1")  # a pre-release it runs counts
    assert not runtime_satisfies(">=0.2.0", "0.1.9")
    assert not runtime_satisfies(">=0.2.0", None)
    assert not runtime_satisfies(">=0.2.0", "dev")
