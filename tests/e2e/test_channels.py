"""Channels end to end: real runtimes follow `beta` and `stable`; promotion is a git-style edit."""

from __future__ import annotations

import json
import shutil
from functools import partial
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import MakeFleet, StoreView, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow

BETA_RING = ["dev-00", "dev-01", "dev-02"]
POLICY = {"waves": [100], "max_parallel": 3, "soak": "1s", "min_success_rate": 1.0,
          "max_failure_rate": 0.0}  # fmt: skip


def _groups(beta: dict[str, str], stable: dict[str, str]) -> dict[str, Any]:
    return {
        "beta-ring": {"members": BETA_RING, "priority": 10, "agent": beta, "rollout": POLICY},
        "fleet": {"match": {"site": "demo"}, "agent": stable, "rollout": POLICY},
    }


def test_beta_group_takes_a_new_beta_release_stable_group_waits_for_the_promotion(
    make_fleet: MakeFleet,
) -> None:
    """Six real runtimes on 3.0.0: three follow beta, three stable. When 3.0.1 appears on
    beta only the beta ring moves (the stable devices' agents keep running untouched); after
    `engine release promote 3.0.1 stable` the next plan/apply moves the stable group too."""
    release = {"release": "3.0.0"}
    fleet = make_fleet(specs(6), _groups(release, release))
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    view = StoreView(fleet)
    repo = fleet.repo
    stable_ids = [i for i in fleet.devices if i not in BETA_RING]

    # Follow channels; 3.0.1 is not released yet (its manifest is set aside).
    hidden = fleet.base / "unreleased"
    hidden.mkdir()
    for name in ("3.0.1.yaml", "3.0.1.yaml.sig"):
        shutil.move(repo.root / "releases" / name, hidden / name)
    (repo.root / "channels.yaml").write_text(
        "# channels of this fleet, most stable first\n"
        "channels: [stable, beta, alpha]\n"
        "releases:\n"
        '  "3.0.0": stable\n'
    )
    doc = yaml.safe_load(repo.inventory.read_text())
    doc["groups"] = _groups({"channel": "beta"}, {"channel": "stable"})
    repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = json.loads(repo.engine("plan", "--json").stdout)
    assert plan["summary"]["noop"] == 6
    assert {d["channel"] for d in plan["devices"]} == {"beta", "stable"}

    # -- a beta release appears: only the beta ring moves ------------------------------------
    for name in ("3.0.1.yaml", "3.0.1.yaml.sig"):
        shutil.move(hidden / name, repo.root / "releases" / name)
    promoted = repo.engine("release", "promote", "3.0.1", "beta")
    assert "beta-ring (channel beta): 3.0.0 -> 3.0.1" in promoted.stdout
    shown = repo.engine("plan").stdout
    assert "channel beta -> 3.0.1 (newest on beta or more stable)" in shown
    assert "channel stable -> 3.0.0 (newest on stable)" in shown
    before = {i: fleet.devices[i].agent_pid() for i in stable_ids}
    applied = repo.engine("apply", "--yes", "--wait", check=False, timeout=240)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    ring = view.rollout("beta-ring@3.0.1")
    assert ring.state == "completed"
    assert {r.state for r in view.devices(ring.id)} == {"succeeded"}
    assert not [r for r in view.events("3.0.1") if r.device in stable_ids]
    for i in BETA_RING:
        wait_until(f"{i} to run 3.0.1", partial(fleet.devices[i].runs, "3.0.1"), timeout=30)
    for i in stable_ids:
        d = fleet.devices[i]
        assert d.installed() == "3.0.0" and d.agent_pid() == before[i], i
        assert all(t[0] != "3.0.1" for t in d.transactions()), i

    # -- promoted to stable: the next plan/apply moves the stable group ----------------------
    promoted = repo.engine("release", "promote", "3.0.1", "stable")
    assert '-  "3.0.1": beta\n+  "3.0.1": stable\n' in promoted.stdout
    assert "fleet (channel stable): 3.0.0 -> 3.0.1" in promoted.stdout
    plan = json.loads(repo.engine("plan", "--json").stdout)
    moving = {d["device"] for d in plan["devices"] if d["action"] == "update"}
    assert moving == set(stable_ids)
    fleet_rollout = next(r for r in plan["rollouts"] if r["id"] == "fleet@3.0.1")
    assert fleet_rollout["resolution"] == "channel stable -> 3.0.1 (newest on stable)"
    applied = repo.engine("apply", "--yes", "--wait", check=False, timeout=240)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout = view.rollout("fleet@3.0.1")
    assert rollout.state == "completed"
    assert {r.state for r in view.devices(rollout.id)} == {"succeeded"}
    for i, d in fleet.devices.items():
        wait_until(f"{i} to run 3.0.1", partial(d.runs, "3.0.1"), timeout=30)
        assert [t for t in d.transactions() if t[0] == "3.0.1"] == [("3.0.1", "committed")]
