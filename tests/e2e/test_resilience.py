"""The server dies mid-rollout (SIGKILL) and comes back on the same port and store."""

from __future__ import annotations

import time
from functools import partial

import pytest

from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow


def test_rollout_resumes_after_server_is_killed_and_no_device_updates_twice(
    make_fleet: MakeFleet,
) -> None:
    """Killed after its first wave succeeded, the restarted server finishes the rollout; every
    device ends on 3.0.1 with exactly one committed update, and the agents kept running while
    the server was down."""
    fleet = make_fleet(specs(10), fleet_group("3.0.0", max_parallel=2, soak="1s"))
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    view = StoreView(fleet)
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout_id = view.rollout("fleet@3.0.1").id

    def midway() -> bool:
        states = [r.state for r in view.devices(rollout_id)]
        return states.count("succeeded") >= 1 and states.count("pending") >= 3

    wait_until("the first wave to succeed", midway, timeout=90, interval=0.1)
    fleet.server.kill()
    pids = {i: d.agent_pid() for i, d in fleet.devices.items()}
    time.sleep(3)  # the runtimes find the server gone and back off
    for i, d in fleet.devices.items():
        assert d.running(), f"{i}: runtime died with the server"
        assert d.agent_pid() == pids[i] is not None, f"{i}: agent touched while the server was down"
    assert any("server unavailable" in d.log_text() for d in fleet.devices.values())

    fleet.server.start()
    wait_until("the rollout to complete after the restart",
               lambda: view.rollout("fleet@3.0.1").state == "completed", timeout=120)  # fmt: skip
    rows = view.devices(rollout_id)
    assert len(rows) == 10 and {r.state for r in rows} == {"succeeded"}
    for i, d in fleet.devices.items():
        wait_until(f"{i} to heartbeat on 3.0.1", partial(d.heartbeating, "3.0.1"), timeout=20)
        updates = [t for t in d.transactions() if t[0] == "3.0.1"]
        assert updates == [("3.0.1", "committed")], (i, d.transactions())
    assert fleet.server.starts == 2
