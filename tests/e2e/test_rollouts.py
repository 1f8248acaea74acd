"""Staged rollouts end to end: 20 real runtimes converge through waves; a broken release halts."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from functools import partial
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, max_overlap, seconds, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow

MAX_PARALLEL = 3
SOAK = "2s"
CANARIES = ["dev-00", "dev-01"]


def test_good_release_converges_in_waves_then_broken_release_halts_and_rolls_back(
    make_fleet: MakeFleet,
) -> None:
    """3.0.1 reaches all 20 devices wave by wave (never more than max_parallel updating, each
    wave offered only after the previous one finished and soaked); then two devices become a
    canary group the fleet waits for (after: [canary]): 3.0.2 fails on the canaries, their
    rollout halts, they run 3.0.1 again, and the fleet's rollout halts without a single fleet
    device being offered 3.0.2."""
    fleet = make_fleet(specs(20), fleet_group("3.0.0", max_parallel=MAX_PARALLEL, soak=SOAK))
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    view = StoreView(fleet)

    # -- the good release ------------------------------------------------------------------
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=240)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout = view.rollout("fleet@3.0.1")
    assert rollout.state == "completed"
    rows = view.devices(rollout.id)
    assert len(rows) == 20 and {r.state for r in rows} == {"succeeded"}
    assert all(r.attempts == 1 for r in rows)
    by_wave: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_wave[r.wave].append(r)
    assert sorted(by_wave) == [0, 1, 2]
    # never more than max_parallel devices between taking the plan and being judged
    assert max_overlap([(r.started_at, r.finished_at) for r in rows]) <= MAX_PARALLEL
    # ... nor between their first and last step event
    spans: dict[str, list[datetime]] = defaultdict(list)
    for e in view.events("3.0.1"):
        spans[e.device].append(e.at)
    assert set(spans) == {r.device for r in rows}
    assert max_overlap([(min(a), max(a)) for a in spans.values()]) <= MAX_PARALLEL
    # waves in order: wave k+1 is offered only after every device of wave k finished + soak
    for k in (0, 1):
        done = max(r.finished_at for r in by_wave[k])
        first = min(r.offered_at for r in by_wave[k + 1])
        assert first >= done + seconds(SOAK), (k, done, first)
    for d in fleet.devices.values():
        assert d.installed() == "3.0.1" and d.heartbeating("3.0.1")
        assert [t for t in d.transactions() if t[0] == "3.0.1"] == [("3.0.1", "committed")]

    # -- the broken release, with canaries that gate the fleet --------------------------------
    doc = yaml.safe_load(fleet.repo.inventory.read_text())
    doc["groups"]["canary"] = {
        "members": CANARIES,
        "priority": 100,
        "agent": {"release": "3.0.1"},
        "rollout": {"waves": [100], "soak": SOAK, "max_failure_rate": 0.0},
    }
    doc["groups"]["fleet"]["rollout"]["after"] = ["canary"]
    fleet.repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet.repo.set_release("3.0.2")
    before = {i: d.agent_pid() for i, d in fleet.devices.items()}
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=240)
    assert applied.returncode == 1
    canary = view.rollout("canary@3.0.2")
    assert canary.state == "halted", applied.stdout + applied.stderr
    rollout = view.rollout("fleet@3.0.2")
    assert rollout.state == "halted", applied.stdout + applied.stderr
    assert rollout.reason == f"canary@3.0.2 halted: {canary.reason}"
    assert json.loads(rollout.after_ids) == [canary.id]
    rows = view.devices(rollout.id)
    assert len(rows) == 20 - len(CANARIES)
    assert all(r.attempts == 0 and r.state == "pending" for r in rows)
    took = {r.device for r in view.devices(canary.id) if r.attempts > 0}
    assert took and took <= set(CANARIES)
    touched = {e.device for e in view.events("3.0.2")}
    assert touched == took
    for i, d in fleet.devices.items():
        if i in took:
            assert ("3.0.2", "rolled_back") in d.transactions()
            wait_until(f"{i} to run 3.0.1 again", partial(d.runs, "3.0.1"), timeout=30)
            beat = d.heartbeat()
            assert beat is not None and beat["pid"] == d.agent_pid() != before[i]
        else:
            assert all(t[0] != "3.0.2" for t in d.transactions()), i
            assert d.installed() == "3.0.1" and d.agent_pid() == before[i]
    status = json.loads(fleet.repo.engine("status", "--json").stdout)
    mine = next(r for r in status["rollouts"] if r["name"] == "fleet@3.0.2")
    assert mine["state"] == "halted" and mine["totals"]["succeeded"] == 0
    assert [w["open"] for w in mine["waves"]] == [False, False, False]
    assert mine["after"] == ["canary@3.0.2"]
