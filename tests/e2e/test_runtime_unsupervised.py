"""A runtime that does not run under the supervisor refuses a runtime release and says why.

Such a runtime (installed before runtime self-update, or without the
supervisor) cannot install a runtime beside itself, and says so at check-in:
the plan leaves it out of runtime rollouts (tests/e2e/test_runtime_capability.py).
Offered a runtime release all the same (a plan made before the server knew),
it reports the refusal at once, so the runtime rollout fails the device with the reason
instead of waiting for its update timeout; the runtime and the agent are left
as they were.
"""

from __future__ import annotations

import json
import time

import pytest

from agent_runtime.pull import NOT_SUPERVISED
from engine.store import Store
from engine.store.schema import reports
from tests.e2e.conftest import (
    MakeFleet,
    StoreView,
    _trust,
    fleet_group,
    runtime_versions,
    set_runtime,
    specs,
)
from tests.harness import wait_until
from tests.runtime_releases import ReleaseBundles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GOOD = "0.2.0"


def test_a_runtime_without_the_supervisor_fails_the_runtime_rollout_with_the_reason(
    make_fleet: MakeFleet, release_bundles: ReleaseBundles
) -> None:
    """The device is failed with the refusal as its reason well before the update timeout,
    the rollout halts, and the device keeps its runtime version and its agent's pid."""
    policy = {"waves": [100], "max_parallel": 1, "soak": "1s", "max_failure_rate": 0.0}
    fleet = make_fleet(
        specs(1), fleet_group("3.0.0", **policy), layout=lambda _i: "in_place",
        server_env={"ENGINE_ROLLOUT_UPDATE_TIMEOUT": "1h"},
    )  # fmt: skip
    fleet.setup("3.0.0")
    _trust(fleet, [fleet.repo.public_key(), release_bundles.public_key])
    (device_id,) = fleet.devices
    device = fleet.device(device_id)
    fleet.start()  # a plain runtime in pull mode: no supervisor, no runtime home
    view = StoreView(fleet)
    wait_until(
        "the runtime to check in", lambda: bool(runtime_versions(view).get(device_id)), timeout=120
    )
    before = runtime_versions(view)[device_id]
    wait_until("the agent to run", lambda: bool(device.agent_pid()), timeout=60)
    pid = device.agent_pid()

    made = fleet.repo.engine(
        "runtime", "release", "--from", str(release_bundles.bundles(GOOD)), "--json"
    )
    assert json.loads(made.stdout)["targets"]
    set_runtime(fleet, GOOD)
    # Its runtime says it cannot update itself, so the plan would leave it out (ADR 0024).
    # The refusal is the safety net for a plan made while the store did not know that:
    # a report from before the server kept features, as the runtime stopped meanwhile.
    device.stop()
    time.sleep(1.0)  # its last check-in's report, buffered by the server, is written by now
    with Store.open(view.url, migrate=False) as store, store.write() as conn:
        conn.execute(reports.update().values(features=None))
    applied = fleet.repo.engine("apply", "--yes", check=False, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    device.start()
    wait_until(
        "the runtime rollout to halt",
        lambda: view.rollout(f"fleet@runtime-{GOOD}").state == "halted",
        timeout=120,
    )

    rollout = view.rollout(f"fleet@runtime-{GOOD}")
    assert rollout.state == "halted", rollout.reason
    (row,) = view.devices(rollout.id)
    assert row.state == "failed"
    assert f"runtime {GOOD} failed" in (row.reason or "")
    assert NOT_SUPERVISED in (row.reason or "")
    assert "offered, but this runtime does not run under the supervisor" in device.log_text()
    assert runtime_versions(view)[device_id] == before
    assert device.agent_pid() == pid
    assert device.heartbeating("3.0.0")
