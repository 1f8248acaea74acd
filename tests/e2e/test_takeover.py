"""Field devices taken over, and the field endpoints, against a real `engine serve`.

A *field device* is what the old snippet left behind: the agent's files in place under
its root, no runtime, no runtime state. The runtime's device config names the version
(``installed_version``), and its first result (adopted, verified, started) counts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.conftest import MakeFleet, StoreView
from tests.harness.fleet import Fleet, preinstall_devices
from tests.harness.procs import wait_until
from tests.harness.repo import DeviceSpec

pytestmark = pytest.mark.slow

FIELD = "field-01"
FLEET = ["dev-01", "dev-02"]


def _groups(release: str, *, canary_soak: str = "1s") -> dict[str, Any]:
    """A one-device canary group and a fleet group that waits for it (after: [canary])."""
    return {
        "canary": {
            "members": [FIELD],
            "priority": 100,
            "agent": {"release": release},
            "rollout": {"waves": [100], "soak": canary_soak, "max_failure_rate": 0.0},
        },
        "fleet": {
            "match": {"site": "demo"},
            "agent": {"release": release},
            "rollout": {"waves": [100], "max_parallel": 3, "soak": "1s",
                        "max_failure_rate": 0.0, "after": ["canary"]},
        },
    }  # fmt: skip


def _field_version(fleet: Fleet) -> requests.Response:
    return requests.get(fleet.server.url + "/diags/persistentagentversion", timeout=10)


def _served(fleet: Fleet) -> str | None:
    """The version the field endpoint names (None when it answers 404)."""
    answer = _field_version(fleet)
    if answer.status_code == 404:
        assert "detail" in answer.json()
        return None
    assert answer.status_code == 200, answer.text
    version: str = answer.json()["persistent_agent_version"]
    return version


def test_field_device_adopted_in_the_canary_lets_the_fleet_proceed(
    make_fleet: MakeFleet,
) -> None:
    """A canary of one field device (3.0.0 in place, no runtime): the plan says adopt; its
    runtime adopts, verifies and starts the agent without a transaction and reports that
    result; the canary rollout completes on it and the fleet waiting for it installs 3.0.0."""
    specs = [DeviceSpec(FIELD, "linux"), *(DeviceSpec(i, "linux") for i in FLEET)]
    fleet = make_fleet(specs, _groups("3.0.0"), layout=lambda _i: "in_place")
    fleet.repo.create(fleet.specs, fleet.groups, poll_interval="1s")
    fleet.server.start()
    key = fleet.repo.public_key()
    field = fleet.device(FIELD)
    for d in fleet.devices.values():
        extra = {"installed_version": "3.0.0"} if d.id == FIELD else {}
        d.write_config(key, fleet.server.url, fleet.server.enrollment_secret, **extra)
    # the old snippet's install: the release's files copied in place, nothing else
    shutil.copytree(fleet.repo.root / "artifacts" / "3.0.0" / "linux", field.agent_root)
    before = {p.relative_to(field.agent_root): p.read_bytes() for p in
              field.agent_root.rglob("*") if p.is_file()}  # fmt: skip
    # what the system in the field knows: versions, no runtime
    exported = fleet.base / "export.json"
    seen = datetime.now(UTC).isoformat()
    exported.write_text(json.dumps(
        [{"device": FIELD, "agent_version": "3.0.0", "platform": "linux", "last_seen": seen}]
        + [{"device": i, "agent_version": None, "platform": "linux", "last_seen": seen}
           for i in FLEET]
    ))  # fmt: skip
    fleet.repo.engine("reports", "import", str(exported))

    plan = json.loads(fleet.repo.engine("plan", "--json").stdout)
    actions = {d["device"]: d["action"] for d in plan["devices"]}
    assert actions == {FIELD: "adopt", "dev-01": "install", "dev-02": "install"}
    entry = next(d for d in plan["devices"] if d["device"] == FIELD)
    assert [s["name"] for s in entry["steps"]] == ["verify", "commit"]
    assert plan["summary"]["adopt"] == 1
    human = fleet.repo.engine("plan").stdout
    assert "1 to adopt" in human and f"@ {FIELD}" in human

    fleet.repo.engine("apply", "--yes")
    view = StoreView(fleet)
    canary = view.rollout("canary@3.0.0")
    # not counted yet (the controller may already have offered it: it is online)
    assert [r.state for r in view.devices(canary.id)] in (["pending"], ["offered"])

    fleet.start()
    wait_until(
        "the fleet rollout to complete",
        lambda: view.rollout("fleet@3.0.0").state == "completed",
        timeout=120,
        interval=0.5,
    )
    canary = view.rollout("canary@3.0.0")
    assert canary.state == "completed" and canary.completed_at is not None
    [row] = view.devices(canary.id)
    assert row.state == "succeeded" and row.attempts == 1
    # taken over without a transaction: no download, no swap, the files untouched
    assert field.transactions() == []
    assert "adopted the install" in field.log_text()
    assert "result: noop — 3.0.0 installed and verified; agent was not running: started it" in (
        field.log_text()
    )
    assert field.state()["adopted_from"] == "config" and field.installed() == "3.0.0"
    wait_until(f"{FIELD} to heartbeat on 3.0.0", partial(field.heartbeating, "3.0.0"), timeout=20)
    after = {p.relative_to(field.agent_root): p.read_bytes() for p in
             field.agent_root.rglob("*.py") if p.is_file()}  # fmt: skip
    assert {p: b for p, b in before.items() if p.suffix == ".py"} == after
    for i in FLEET:
        d = fleet.device(i)
        assert d.transactions() == [("3.0.0", "committed")] and d.installed() == "3.0.0"
    fleet_rows = view.devices(view.rollout("fleet@3.0.0").id)
    assert {r.device: r.state for r in fleet_rows} == {i: "succeeded" for i in FLEET}
    assert _served(fleet) == "3.0.0"


def test_field_endpoints_answer_only_a_release_that_completed(
    make_fleet: MakeFleet,
) -> None:
    """The field endpoint names the release the fleet runs before anything completed, keeps it
    during a canary, after a halt and after that rollout is superseded; names a new release
    once its rollouts all completed (and serves its files); engine.yaml's field_release wins."""
    specs = [DeviceSpec(FIELD, "linux"), *(DeviceSpec(i, "linux") for i in FLEET)]
    fleet = make_fleet(specs, _groups("3.0.0", canary_soak="2s"), layout=lambda _i: "in_place")
    fleet.repo.create(fleet.specs, fleet.groups, poll_interval="1s")
    fleet.server.start()
    assert _served(fleet) is None  # nothing known yet: 404 with a JSON error
    key = fleet.repo.public_key()
    for d in fleet.devices.values():
        d.write_config(key, fleet.server.url, fleet.server.enrollment_secret)
    preinstall_devices(list(fleet.devices.values()), fleet.repo, "3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    view = StoreView(fleet)
    assert _served(fleet) == "3.0.0"  # before any release completed: what the fleet runs

    # the broken 3.0.2 in its canary, then halted
    fleet.repo.set_release("3.0.2")
    fleet.repo.engine("apply", "--yes")
    assert view.rollout("canary@3.0.2").state == "active"
    assert _served(fleet) == "3.0.0"
    wait_until(
        f"{FIELD} to take 3.0.2",
        lambda: any(r.attempts for r in view.devices(view.rollout("canary@3.0.2").id)),
        timeout=60,
        interval=0.2,
    )
    assert view.rollout("canary@3.0.2").state == "active"
    assert _served(fleet) == "3.0.0"  # during the canary
    wait_until(
        "the canary to halt",
        lambda: view.rollout("canary@3.0.2").state == "halted",
        timeout=120,
        interval=0.5,
    )
    assert _served(fleet) == "3.0.0"  # after the halt

    # 3.0.1 supersedes the halted 3.0.2; during its canary the field still gets 3.0.0
    fleet.repo.set_release("3.0.1")
    fleet.repo.engine("apply", "--yes")
    assert {view.rollout(f"{g}@3.0.2").state for g in ("canary", "fleet")} == {"superseded"}
    assert _served(fleet) == "3.0.0"
    wait_until(
        "3.0.1 to complete everywhere",
        lambda: {view.rollout(f"{g}@3.0.1").state for g in ("canary", "fleet")} == {"completed"},
        timeout=180,
        interval=0.5,
    )
    assert _served(fleet) == "3.0.1"  # after completion
    body = _field_version(fleet).json()
    agent = requests.get(fleet.server.url + "/installerFiles/Linux/Agent/nats_agent.py", timeout=10)
    assert agent.status_code == 200
    assert hashlib.sha256(agent.content).hexdigest() == body["persistent_agent_hash_linux"]
    manifest = yaml.safe_load((fleet.repo.root / "releases" / "3.0.1.yaml").read_text())
    wanted = next(
        f for f in manifest["platforms"]["linux"]["files"] if f["path"] == "nats_agent.py"
    )
    assert body["persistent_agent_hash_linux"] == wanted["sha256"]

    # a newer apply supersedes the completed 3.0.1 rollouts: 3.0.1 stays the field release
    fleet.repo.set_release("3.0.2")
    fleet.repo.engine("apply", "--yes")
    assert {view.rollout(f"{g}@3.0.1").state for g in ("canary", "fleet")} == {"superseded"}
    assert _served(fleet) == "3.0.1"

    # engine.yaml's field_release decides when set (read when the server starts)
    settings = fleet.repo.root / "engine.yaml"
    doc = yaml.safe_load(settings.read_text())
    doc["field_release"] = "3.0.0"
    settings.write_text(yaml.safe_dump(doc))
    fleet.server.stop()
    fleet.server.start()
    assert _served(fleet) == "3.0.0"
