"""The runtime as a managed component, end to end with real processes.

Three devices, each with its agent (the example agent 3.0.0 under the process
manager) and its runtime running under the supervisor from a runtime home, in
pull mode against a real `engine serve`. A runtime release made with `engine
runtime release` from bundles built with `engine runtime bundle --version`
rolls out like an agent release (`runtime: {release: ...}` on the group,
`engine apply`): every device installs it beside its runtime, hands over, and
the new runtime confirms itself by checking in. Then a broken runtime release
(its `agent-runtime` exits at start) is reverted by every device on its own and
the rollout halts. The agents' pids never change.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import MakeFleet, runtime_versions, set_runtime, supervised_fleet
from tests.harness import wait_until
from tests.harness.supervised import SupervisedRuntime
from tests.runtime_releases import BROKEN_MESSAGE, ReleaseBundles

# Building venvs is slow on a busy machine: each test may take several minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

GOOD = "0.2.0"
BROKEN = "0.3.0"
RELEASES = {GOOD: False, BROKEN: True}


def _runtimes_of(home: Path) -> list[psutil.Process]:
    """`agent-runtime converge` processes running from ``home``'s versions (not the
    supervisor, not a venv build's pip)."""
    versions = str(home / "versions")
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info.get("cmdline") or []
        if (
            p.info.get("status") != psutil.STATUS_ZOMBIE
            and "converge" in cmd
            and any(a.startswith(versions) and a.endswith("agent-runtime") for a in cmd)
        ):
            found.append(p)
    return found


def _only_recorded(sup: SupervisedRuntime) -> bool:
    """Exactly one runtime runs from the home, and it is the one the supervisor recorded
    (``child.pid``): it knows to stop it."""
    return [p.pid for p in _runtimes_of(sup.home)] == [sup.child_pid()]


def test_runtime_release_rolls_out_then_a_broken_one_is_reverted_and_halts(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
) -> None:
    """GOOD reaches all three devices through the supervisor's hand-over; BROKEN exits at
    start on every device, each supervisor restores GOOD, the devices report it, and the
    rollout halts. The agents keep their pids throughout."""
    policy = {"waves": [100], "max_parallel": 3, "soak": "1s", "max_failure_rate": 0.0}
    fleet, view = supervised_fleet(make_fleet, release_bundles, supervised, 3, policy, RELEASES)
    ids = sorted(fleet.devices)
    base = release_bundles.base_version
    pids = {i: fleet.device(i).agent_pid() for i in ids}

    # -- the good runtime release ---------------------------------------------------------
    set_runtime(fleet, GOOD)
    plan = fleet.repo.engine("plan", "--json", check=False)
    assert plan.returncode == 0, plan.stderr
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=600)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout = view.rollout(f"fleet@runtime-{GOOD}")
    assert (rollout.state, rollout.component) == ("completed", "runtime")
    rows = view.devices(rollout.id)
    assert sorted(r.device for r in rows) == ids
    assert {r.state for r in rows} == {"succeeded"}
    assert {r.from_version for r in rows} == {base}
    assert all(v == GOOD for v in runtime_versions(view).values())
    for sup in supervised:
        wait_until(
            "the supervisor to keep the new runtime",
            lambda s=sup: s.current() == GOOD and s.outcome().get("result") == "confirmed",  # type: ignore[misc]
            timeout=30,
        )
        assert (sup.home / "versions" / GOOD / "bin" / "agent-runtime").exists()
    assert {i: fleet.device(i).agent_pid() for i in ids} == pids
    assert all(fleet.device(i).heartbeating("3.0.0") for i in ids)

    # -- the broken one: every device reverts on its own, the rollout halts ---------------
    set_runtime(fleet, BROKEN)
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=600)
    assert applied.returncode == 1, applied.stdout + applied.stderr
    rollout = view.rollout(f"fleet@runtime-{BROKEN}")
    assert rollout.state == "halted", rollout.reason
    assert "max_failure_rate" in (rollout.reason or "")
    for sup in supervised:
        wait_until(
            "every device to revert the broken runtime",
            lambda s=sup: s.outcome().get("result") == "reverted",  # type: ignore[misc]
            timeout=180,
        )
        outcome = sup.outcome()
        assert outcome["target"] == BROKEN
        assert "exited with 3" in outcome["detail"]
        assert sup.current() == GOOD
    wait_until(
        "every device of the broken rollout to be judged failed",
        lambda: {r.state for r in view.devices(rollout.id)} == {"failed"},
        timeout=60,
    )
    assert all("reverted" in (r.reason or "") for r in view.devices(rollout.id))
    wait_until(
        "every device to report the good runtime again",
        lambda: all(v == GOOD for v in runtime_versions(view).values()),
        timeout=60,
    )
    assert all(BROKEN_MESSAGE in fleet.device(i).log_text() for i in ids)
    assert {i: fleet.device(i).agent_pid() for i in ids} == pids
    assert all(fleet.device(i).heartbeating("3.0.0") for i in ids)


def test_kills_mid_install_and_mid_trial_leave_one_runtime_and_the_update_lands(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
) -> None:
    """The running runtime is SIGKILLed while it builds the new venv, then the supervisor is
    SIGKILLed as soon as it starts the new runtime (and started again, as a service manager
    would). After each kill exactly one runtime runs; the device ends on GOOD (retried by the
    rollout when the kill reverted the trial) and its agent never changed its pid."""
    policy = {"waves": [100], "max_parallel": 1, "soak": "1s", "max_failure_rate": 1.0}
    fleet, view = supervised_fleet(
        make_fleet, release_bundles, supervised, 1, policy, {GOOD: False},
        server_env={"ENGINE_ROLLOUT_RETRY_BACKOFF": "1s"},
    )  # fmt: skip
    (sup,) = supervised
    device = fleet.device(sup.device.id)
    pid = device.agent_pid()
    set_runtime(fleet, GOOD)
    applied = fleet.repo.engine("apply", "--yes", check=False, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    marker = sup.home / "versions" / f".{GOOD}.installing"
    wait_until("the venv build to start", marker.exists, timeout=120, interval=0.05)
    (old,) = _runtimes_of(sup.home)
    old.kill()
    wait_until(
        "the supervisor to start the old runtime again",
        lambda: [p.pid for p in _runtimes_of(sup.home)] not in ([], [old.pid]),
        timeout=30,
    )
    assert sup.current() == release_bundles.base_version

    wait_until(
        "the trial to start",
        lambda: bool((sup.state().get("trial") or {}).get("started")),
        timeout=240,
        interval=0.05,
    )
    sup.kill_supervisor()
    sup.start()
    wait_until("one runtime to run, the one the new supervisor started",
               lambda: _only_recorded(sup), timeout=60)  # fmt: skip
    # Counted succeeded only once the supervisor kept the new runtime (a trial the kill
    # reverted is retried by the rollout first).
    rollout = view.rollout(f"fleet@runtime-{GOOD}")
    wait_until(
        "the rollout to count the device succeeded",
        lambda: [r.state for r in view.devices(rollout.id)] == ["succeeded"],
        timeout=400,
        progress=lambda: (f"devices {[(r.state, r.reason) for r in view.devices(rollout.id)]}, "
                          f"runtime.json {sup.state()}, outcome {sup.outcome()}, runtimes "
                          f"{[p.pid for p in _runtimes_of(sup.home)]}, child {sup.child_pid()}"),
    )  # fmt: skip
    assert sup.current() == GOOD and not sup.state().get("trial")
    assert sup.outcome()["result"] == "confirmed"
    assert runtime_versions(view).get(device.id) == GOOD
    wait_until("one runtime to run", lambda: _only_recorded(sup), timeout=30)
    assert device.agent_pid() == pid
    assert device.heartbeating("3.0.0")
