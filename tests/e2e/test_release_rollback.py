"""A release made by `engine release new` from a 200-file build, rolled out to 12 real runtimes:
it passes the canaries, fails in the fleet's second wave, and ``rollback: release`` sends the
canaries back to the previous release too."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import yaml

from engine.store import Store
from tests.e2e.conftest import MakeFleet, StoreView, specs
from tests.harness import REPO_ROOT, wait_until

pytestmark = pytest.mark.slow

CANARIES = ["dev-00", "dev-01"]
SOAK = "2s"
#: behaviour.py of the new build: it breaks where the device's break file exists (set by the
#: test on the fleet's second wave only), as a bug that shows on some devices would.
BEHAVIOUR = (
    '"""Good, unless this device has the break file (the e2e test sets it)."""\n'
    "import os\n"
    "\n"
    'BEHAVIOUR = "exit_at_start" if os.path.exists(os.environ.get("E2E_BREAK_FILE", "")) '
    'else "good"\n'
)


def _build(target: Path, version: str) -> Path:
    """The example agent as version ``version``, padded to 200 files."""
    shutil.copytree(
        REPO_ROOT / "examples" / "agent", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    (target / "core" / "version.py").write_text(f'VERSION = "{version}"\n')
    (target / "core" / "behaviour.py").write_text(BEHAVIOUR)
    data = target / "data"
    data.mkdir()
    have = sum(1 for p in target.rglob("*") if p.is_file())
    for i in range(200 - have):
        (data / f"table-{i:03d}.txt").write_text(f"row {i}\n" * (i + 1))
    assert sum(1 for p in target.rglob("*") if p.is_file()) == 200
    return target


def test_release_new_rolls_out_and_rollback_release_returns_the_canaries(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    """`engine release new` makes a signed 200-file release that validates; rolled out, it
    passes the canary group that gates the fleet, fails in the fleet's second wave, and with
    on_failure {action: halt, rollback: release} every rollout of it halts: the canaries and the
    fleet's first wave end back on 3.0.1, the second wave never leaves it."""
    fleet_policy = {
        "waves": [30, 100], "max_parallel": 3, "soak": SOAK, "min_success_rate": 1.0,
        "max_failure_rate": 0.0, "after": ["canary"],
        "on_failure": {"action": "halt", "rollback": "release"},
    }  # fmt: skip
    groups = {
        "canary": {
            "members": CANARIES, "priority": 100, "agent": {"release": "3.0.1"},
            "rollout": {"waves": [100], "soak": SOAK, "max_failure_rate": 0.0},
        },
        "fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.1"},
                  "rollout": fleet_policy},
    }  # fmt: skip
    fleet = make_fleet(specs(12), groups)
    fleet.setup("3.0.1")
    for d in fleet.devices.values():  # the break file each device's agent looks for
        d.write_config(
            fleet.repo.public_key(), fleet.server.url, fleet.server.enrollment_secret,
            env={"HEARTBEAT_INTERVAL": d.timings.heartbeat, "PYTHONDONTWRITEBYTECODE": "1",
                 "E2E_BREAK_FILE": str(d.base / "break")},
        )  # fmt: skip
    fleet.start()
    fleet.wait_reported("3.0.1")
    view = StoreView(fleet)

    serials = [
        yaml.safe_load(p.read_text())["serial"]
        for p in (fleet.repo.root / "releases").glob("*.yaml")
    ]
    serial = max(serials) + 1
    build = _build(tmp_path / "build", "3.1.0")
    made = fleet.repo.engine(
        "release", "new", "3.1.0", "--from", str(build), "--platform", "linux",
        "--platform", "windows", "--platform", "macos", "--rollback-to", "3.0.1",
        "--key", str(fleet.repo.key),
    )  # fmt: skip
    assert f"release 3.1.0 (serial {serial}): 200 files" in made.stdout
    manifest = yaml.safe_load((fleet.repo.root / "releases" / "3.1.0.yaml").read_text())
    assert {len(p["files"]) for p in manifest["platforms"].values()} == {200}
    fleet.repo.engine("release", "verify", "releases/3.1.0.yaml", "--pub", str(fleet.repo.pub))
    fleet.repo.set_release("3.1.0")
    fleet.repo.engine("validate")
    listed = json.loads(fleet.repo.engine("release", "list", "--json").stdout)["releases"][0]
    assert (listed["version"], listed["serial"], listed["signatures"], listed["groups"]) == (
        "3.1.0",
        serial,
        1,
        ["canary", "fleet"],
    )

    applied = fleet.repo.engine("apply", "--yes", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "on_failure halt, rollback release" in applied.stdout
    canary, rollout = view.rollout("canary@3.1.0"), view.rollout("fleet@3.1.0")
    rows = view.devices(rollout.id)
    second = {r.device for r in rows if r.wave >= 1 and r.state == "pending"}
    first = {r.device for r in rows if r.wave == 0 and r.state == "pending"}
    assert first and second and not (set(CANARIES) & (first | second))
    for device in second:
        (fleet.device(device).base / "break").write_text("")

    wait_until("the fleet rollout to halt", lambda: view.rollout("fleet@3.1.0").state == "halted",
               timeout=300)  # fmt: skip
    halted = view.rollout("fleet@3.1.0")
    assert halted.reason.startswith("wave 1: "), halted.reason
    gate = view.rollout("canary@3.1.0")
    assert gate.id == canary.id and gate.state == "halted"
    assert gate.reason.startswith("rollout fleet@3.1.0 halted with rollback: release (wave 1: ")
    for device in [*CANARIES, *first]:
        d = fleet.device(device)
        assert ("3.1.0", "committed") in d.transactions(), device
        wait_until(f"{device} back on 3.0.1", partial(d.runs, "3.0.1"), timeout=180)
    took = {r.device for r in view.devices(rollout.id) if r.attempts > 0} - first
    assert took and took <= second
    for device in second:
        d = fleet.device(device)
        assert d.installed() == "3.0.1" and d.heartbeating("3.0.1", max_age=30), device
    states = {r.device: r.state for r in view.devices(canary.id)}
    wait_until(
        "the canaries' rollback to be judged",
        lambda: {r.state for r in view.devices(canary.id)} == {"rolled_back"},
        timeout=120,
    )
    assert set(states) == set(CANARIES)


def test_saved_plan_survives_check_ins_and_refuses_an_edit(make_fleet: MakeFleet) -> None:
    """On a live fleet a saved plan still applies after devices kept checking in (showing the
    drift); once the inventory is edited, the same command refuses and names the file."""
    fleet = make_fleet(specs(3), {"fleet": {"match": {"site": "demo"},
                                            "agent": {"release": "3.0.0"}}})  # fmt: skip
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    fleet.repo.set_release("3.0.1")
    fleet.repo.engine("plan", "--out", "plan.json")
    saved = yaml.safe_load((fleet.repo.root / "plan.json").read_text())
    view = StoreView(fleet)

    def reported_since() -> bool:
        with Store.open(view.url, migrate=False) as store:
            return bool(store.reports_digest()[1] != saved["state"]["reports_digest"])

    wait_until("a check-in after the plan", reported_since, timeout=60)
    applied = fleet.repo.engine("apply", "plan.json", "--yes", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "No drift: the devices report what they reported when the plan was made." in (
        applied.stdout
    )
    assert "Recorded rollout #1 fleet@3.0.1: 3 devices" in applied.stdout
    inventory = fleet.repo.inventory
    inventory.write_text(inventory.read_text() + "# reviewed\n")
    refused = fleet.repo.engine("apply", "plan.json", "--yes", check=False)
    assert refused.returncode == 1
    assert (
        "the operator repo changed since the plan was made: inventory/fleet.yaml changed"
        in refused.stderr
    )
