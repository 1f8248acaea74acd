"""A release that needs a newer runtime, and the runtime release that brings it, in one apply.

Two devices run agent 3.0.0 and this checkout's runtime (0.1.0) under the
supervisor, in pull mode against a real `engine serve`. The operator repo has
agent release 3.0.1, which requires runtime >=0.2.0, and runtime release 0.2.0;
the group names both. One `engine plan` shows the agent update blocked on each
device, waiting for the runtime rollout that will meet it; one `engine apply`
records both rollouts. The runtime rollout moves the devices to 0.2.0 (the
agent keeps running, same pid), and with no second apply the agent rollout
then offers 3.0.1 to each device, which commits it.
"""

from __future__ import annotations

import json
import re
from functools import partial

import pytest

from tests.e2e.conftest import MakeFleet, runtime_versions, set_runtime, supervised_fleet
from tests.harness import RuntimeDevice, wait_until
from tests.harness.supervised import SupervisedRuntime
from tests.runtime_releases import ReleaseBundles

# Building the runtime venvs is slow on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

NEW_RUNTIME = "0.2.0"
_STARTED = re.compile(r"^agent (\S+) started, pid (\d+)", re.MULTILINE)


def _agent_starts(device: RuntimeDevice) -> list[tuple[str, int]]:
    """(version, pid) of every start of the device's agent, from the agent's own output."""
    text = (device.state_dir / "agent.log").read_text(errors="replace")
    return [(v, int(pid)) for v, pid in _STARTED.findall(text)]


def _kept(sup: SupervisedRuntime) -> bool:
    """True once the supervisor kept the new runtime (it checked in)."""
    return sup.current() == NEW_RUNTIME and sup.outcome().get("result") == "confirmed"


def test_agent_update_waits_for_the_runtime_rollout_then_lands(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
) -> None:
    """Blocked in the plan with the runtime rollout named; the runtime rollout moves both
    devices to 0.2.0 without restarting their agents; then, with no second apply, 3.0.1
    reaches both and is committed."""
    policy = {"waves": [100], "max_parallel": 2, "soak": "1s", "max_failure_rate": 0.0}
    fleet, view = supervised_fleet(
        make_fleet, release_bundles, supervised, 2, policy, {NEW_RUNTIME: False}
    )
    base = release_bundles.base_version
    ids = sorted(fleet.devices)
    devices = {i: fleet.device(i) for i in ids}
    pids = {i: d.agent_pid() for i, d in devices.items()}
    assert all(_agent_starts(d) == [("3.0.0", pids[i])] for i, d in devices.items())

    manifest = fleet.repo.root / "releases" / "3.0.1.yaml"
    manifest.write_text(manifest.read_text() + "requires: {runtime: '>=0.2.0'}\n")
    fleet.repo.engine("release", "sign", str(manifest), "--key", str(fleet.repo.key))
    fleet.repo.set_release("3.0.1")
    set_runtime(fleet, NEW_RUNTIME)

    # -- one plan: the runtime moves, the agent update waits for it, naming it -------------
    plan = json.loads(fleet.repo.engine("plan", "--json").stdout)
    runtime_rollout = f"fleet@runtime-{NEW_RUNTIME}"
    waiting = (
        f"release 3.0.1 needs runtime >=0.2.0, has {base}; "
        f"waits for runtime {NEW_RUNTIME} (rollout {runtime_rollout})"
    )
    agent = {d["device"]: d for d in plan["devices"]}
    assert sorted(agent) == ids
    for d in agent.values():
        assert (d["action"], d["awaits_runtime"], d["reason"]) == ("blocked", ">=0.2.0", waiting)
        assert d["rollout"] == "fleet@3.0.1"
    runtime = {d["device"]: d for d in plan["runtime_devices"]}
    assert {(d["action"], d["desired"]) for d in runtime.values()} == {("update", NEW_RUNTIME)}
    assert {r["id"] for r in plan["rollouts"]} == {"fleet@3.0.1", runtime_rollout}
    shown = fleet.repo.engine("plan", "--verbose").stdout
    assert shown.count(f"waits for runtime {NEW_RUNTIME} (rollout {runtime_rollout})") == 2

    # -- one apply: both rollouts recorded, the agent's devices pending with the reason ----
    fleet.repo.engine("apply", "--yes")
    agent_rollout = view.rollout("fleet@3.0.1")
    rows = view.devices(agent_rollout.id)
    assert {(r.state, r.attempts, r.requires_runtime) for r in rows} == {("pending", 0, ">=0.2.0")}
    assert {r.reason for r in rows} == {waiting}
    assert view.rollout(runtime_rollout).component == "runtime"

    # -- the runtime rollout, then the agent rollout, with no other apply ---------------------
    wait_until(
        "the runtime rollout to complete",
        lambda: view.rollout(runtime_rollout).state == "completed",
        timeout=600,
    )
    rows = view.devices(view.rollout(runtime_rollout).id)
    assert {(r.device, r.state, r.from_version) for r in rows} == {
        (i, "succeeded", base) for i in ids
    }
    for sup in supervised:
        wait_until("the supervisor to keep the new runtime", partial(_kept, sup), timeout=60)
    wait_until(
        "the agent rollout to complete",
        lambda: view.rollout("fleet@3.0.1").state == "completed",
        timeout=300,
    )
    assert {(r.device, r.state) for r in view.devices(agent_rollout.id)} == {
        (i, "succeeded") for i in ids
    }
    assert all(v == NEW_RUNTIME for v in runtime_versions(view).values())
    for i, device in devices.items():
        assert device.runs("3.0.1"), i
        assert device.transactions() == [("3.0.1", "committed")], i
        # The 3.0.0 agent ran from setup until the 3.0.1 update, through the runtime's
        # hand-over: started once, with the pid it had before the runtime rollout.
        assert _agent_starts(device) == [("3.0.0", pids[i]), ("3.0.1", device.agent_pid())], i
