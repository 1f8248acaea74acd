"""The plan JSON leaves out device fields at their default; saved plans of both forms read alike."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.plan_io import OMITTED_DEFAULTS, plan_json, read_plan, write_plan
from engine.planner import plan_fleet
from fleetbase.version import Version
from states.plan import AGENT, RUNTIME, DevicePlan, Plan
from tests.planner.helpers import NOW, make_repo, make_reports

SEEN = NOW.isoformat()


def _plan() -> Plan:
    """Agent plans of every kind of device and runtime plans (component runtime)."""
    inventory = {
        "devices": {
            "d0": {"platform": "linux", "site": "a"},
            "d1": {"platform": "linux", "site": "a"},
            "d2": {"platform": "linux", "site": "a", "pin": "3.0.0"},
            "d3": {"platform": "linux", "site": "b"},
        },
        "groups": {
            "lab": {
                "match": {"site": "a"},
                "agent": {"release": "3.0.1"},
                "runtime": {"release": "0.2.0"},
            }
        },
    }
    reports = make_reports(
        {
            "d0": {"agent_version": "3.0.0", "runtime_version": "0.1.0", "last_seen": SEEN},
            "d2": {"agent_version": "3.0.0", "runtime_version": "0.2.0", "last_seen": SEEN},
        }
    )
    return plan_fleet(
        make_repo(inventory),
        reports,
        NOW,
        stale_after=timedelta(days=1),
        runtime_releases=[Version("0.2.0")],
    )


def _not_default(device: DevicePlan) -> DevicePlan:
    """``device`` with every field that may be left out set to another value."""
    return device.model_copy(
        update={
            "channel": "beta",
            "awaits_runtime": ">=0.2.0",
            "component": RUNTIME,
            "config_digest": "sha256:" + "a" * 64,
            "config_diff": {"agent.json": "--- a/agent.json\n+++ b/agent.json\n"},
        }
    )


def _entries(data: bytes, key: str = "devices") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(data)[key]
    return entries


def test_the_omitted_fields_are_the_device_plans_defaults() -> None:
    fields = DevicePlan.model_fields
    assert {name: fields[name].default for name in OMITTED_DEFAULTS} == OMITTED_DEFAULTS
    assert OMITTED_DEFAULTS["component"] == AGENT


def test_entries_at_their_defaults_leave_them_out() -> None:
    plan = _plan()
    devices = _entries(plan_json(plan))
    assert len(devices) == 3  # d3 is unmanaged
    for entry, device in zip(devices, plan.devices, strict=True):
        full = device.model_dump(mode="json")
        assert entry == {k: v for k, v in full.items() if k not in OMITTED_DEFAULTS}
    runtime = _entries(plan_json(plan), "runtime_devices")
    assert {e["device"] for e in runtime} == {"d0", "d1", "d2"}
    assert {e["component"] for e in runtime} == {RUNTIME}  # not the default: written


def test_every_field_is_written_when_it_is_not_at_its_default() -> None:
    """A device plan with no field at its default is written whole, as pydantic writes it:
    a field added to DevicePlan and not to plan_json fails here."""
    plan = _plan()
    changed = plan.model_copy(update={"devices": [_not_default(d) for d in plan.devices]})
    for entry, device in zip(_entries(plan_json(changed)), changed.devices, strict=True):
        assert entry == device.model_dump(mode="json")
        assert list(entry) == list(DevicePlan.model_fields)


def test_saved_plans_of_both_forms_read_as_the_same_plan(tmp_path: Path) -> None:
    """A plan saved before fields were left out (every field written, as pydantic writes
    it) and one saved now read back to the same plan."""
    plan = _plan()
    partly = plan.model_copy(update={"devices": [_not_default(plan.devices[0]), *plan.devices[1:]]})
    for each in (plan, partly):
        now_form, old_form = tmp_path / "now.json", tmp_path / "old.json"
        write_plan(each, now_form)
        old_form.write_text(each.model_dump_json())
        assert now_form.stat().st_size < old_form.stat().st_size
        assert read_plan(now_form) == read_plan(old_form) == each
