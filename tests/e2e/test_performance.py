"""Performance-impact tracking end to end: a release that leaks memory halts at the canary."""

from __future__ import annotations

import json
import re
from functools import partial

import pytest

from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow

#: The figures a memory failure gives: "memory 31.5 MB on 3.0.4 vs 12.2 MB on 3.0.1 (+158%)".
MEMORY = re.compile(
    r"memory (\d+\.\d) MB on 3\.0\.4 vs (\d+\.\d) MB on 3\.0\.1 \(\+(\d+)%\), "
    r"above max_rss_increase 25%"
)


def test_leaking_release_halts_at_the_canary_on_memory_and_rolls_back(
    make_fleet: MakeFleet,
) -> None:
    """20 real devices on 3.0.1 with max_rss_increase 25%: 3.0.4 (works and heartbeats, but
    leaks memory) commits on the canary wave, its runtimes' samples show the agent's memory
    growing past the limit, the controller fails them, the rollout halts in wave 0; the
    devices that took 3.0.4 run 3.0.1 again, no other device was offered it, and `engine
    status` gives the reason with the figures."""
    group = fleet_group(
        "3.0.1",
        waves=[10, 50, 100],
        max_parallel=3,
        soak="5m",
        max_failure_rate=0.0,
        max_rss_increase="25%",
    )
    fleet = make_fleet(specs(20), group)
    fleet.setup("3.0.1")
    fleet.start()
    fleet.wait_reported("3.0.1")
    view = StoreView(fleet)

    fleet.repo.set_release("3.0.4")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=300)
    assert applied.returncode == 1, applied.stdout + applied.stderr
    rollout = view.rollout("fleet@3.0.4")
    assert rollout.state == "halted", applied.stdout + applied.stderr
    assert rollout.reason.startswith("wave 0: "), rollout.reason
    found = MEMORY.search(rollout.reason)
    assert found is not None, rollout.reason
    after, before, percent = float(found[1]), float(found[2]), int(found[3])
    assert after > before * 1.25 and percent > 25

    rows = view.devices(rollout.id)
    took = {r.device for r in rows if r.attempts > 0}
    assert took and all(r.wave == 0 for r in rows if r.device in took)
    regressed = [r for r in rows if r.state == "regressed"]
    assert regressed and all(MEMORY.search(r.reason or "") for r in regressed)
    assert {r.device for r in rows if r.device not in took} == {
        r.device for r in rows if r.state == "pending"
    }
    assert {e.device for e in view.events("3.0.4")} == took
    for i, d in fleet.devices.items():
        if i in took:
            assert ("3.0.4", "committed") in d.transactions()  # it worked, then it grew
            wait_until(f"{i} back on 3.0.1", partial(d.runs, "3.0.1"), timeout=120)
        else:
            assert all(t[0] != "3.0.4" for t in d.transactions()), i
            assert d.installed() == "3.0.1"

    text = fleet.repo.engine("status").stdout
    assert "halted" in text and "max_rss_increase 25%" in text, text
    assert MEMORY.search(" ".join(text.split())), text
    status = json.loads(fleet.repo.engine("status", "--json").stdout)
    mine = next(r for r in status["rollouts"] if r["name"] == "fleet@3.0.4")
    assert mine["state"] == "halted" and MEMORY.search(mine["reason"])
    assert mine["totals"]["failed"] >= len(regressed)
