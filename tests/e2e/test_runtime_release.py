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

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from sqlalchemy import select

from engine.store.schema import reports
from tests.bundles import RuntimeBundle, install_runtime_venv
from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, specs
from tests.harness import Fleet, wait_until
from tests.harness.supervised import SupervisedRuntime
from tests.runtime_releases import BROKEN_MESSAGE, build_release_bundles

# Building venvs is slow on a busy machine: each test may take several minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

GOOD = "0.2.0"
BROKEN = "0.3.0"


@dataclass(frozen=True)
class ReleaseBundles:
    """The session's runtime: its version and venv, bundles of GOOD and BROKEN, their key."""

    base_version: str
    base_venv: Path
    good: Path
    broken: Path
    public_key: str


@pytest.fixture(scope="session")
def release_bundles(
    runtime_bundle: RuntimeBundle, tmp_path_factory: pytest.TempPathFactory
) -> ReleaseBundles:
    """Built once per session: a venv of the session's runtime bundle (every device's first
    runtime), and bundles of GOOD and BROKEN signed with the same key."""
    base = tmp_path_factory.mktemp("runtime-releases")
    bin_dir = install_runtime_venv(runtime_bundle.directory, base / "venv")
    manifest = json.loads((runtime_bundle.directory / "bundle.json").read_text())
    good = build_release_bundles(base / "good", GOOD, runtime_bundle.key_file)
    broken = build_release_bundles(base / "broken", BROKEN, runtime_bundle.key_file, broken=True)
    return ReleaseBundles(
        manifest["runtime_version"], bin_dir.parent, good, broken, runtime_bundle.public_key
    )


@pytest.fixture
def supervised() -> Iterator[list[SupervisedRuntime]]:
    """Supervisors started by a test; stopped (with their runtimes) afterwards."""
    made: list[SupervisedRuntime] = []
    yield made
    for s in made:
        s.stop()


def _runtime_versions(view: StoreView) -> dict[str, str | None]:
    rows = view._rows(select(reports.c.device, reports.c.runtime_version))
    return {r.device: r.runtime_version for r in rows}


def _set_runtime(fleet: Fleet, version: str) -> None:
    doc = yaml.safe_load(fleet.repo.inventory.read_text())
    doc["groups"]["fleet"]["runtime"] = {"release": version}
    fleet.repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))


def _trust(fleet: Fleet, keys: list[str]) -> None:
    """engine.yaml (key files) and every device pin both the repo's key and the bundles'."""
    engine_yaml = fleet.repo.root / "engine.yaml"
    settings = yaml.safe_load(engine_yaml.read_text())
    (fleet.repo.root / "keys" / "runtime-bundles.pub").write_text(keys[1] + "\n")
    settings["trusted_keys"] = ["keys/release-signing.pub", "keys/runtime-bundles.pub"]
    engine_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    for d in fleet.devices.values():
        d.write_config(keys[0], fleet.server.url, fleet.server.enrollment_secret, trusted_keys=keys)


def _supervised_fleet(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
    count: int,
    policy: dict[str, object],
    **kw: object,
) -> tuple[Fleet, StoreView]:
    """``count`` devices with agent 3.0.0 and their runtimes under supervisors, checked in;
    the runtime releases GOOD and BROKEN made in the repo."""
    fleet = make_fleet(
        specs(count), fleet_group("3.0.0", **policy), layout=lambda _i: "in_place", **kw
    )
    fleet.setup("3.0.0")
    _trust(fleet, [fleet.repo.public_key(), release_bundles.public_key])
    ids = sorted(fleet.devices)
    for i in ids:
        sup = SupervisedRuntime(fleet.device(i))
        sup.prepare(release_bundles.base_version, release_bundles.base_venv)
        sup.start()
        supervised.append(sup)
    view = StoreView(fleet)
    base = release_bundles.base_version
    wait_until(
        f"{count} runtimes {base} to check in",
        lambda: all(_runtime_versions(view).get(i) == base for i in ids),
        timeout=120,
    )
    wait_until(
        "the agents to run", lambda: all(fleet.device(i).agent_pid() for i in ids), timeout=60
    )
    for bundles in (release_bundles.good, release_bundles.broken):
        made = fleet.repo.engine("runtime", "release", "--from", str(bundles), "--json")
        assert json.loads(made.stdout)["targets"]
    return fleet, view


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


def test_runtime_release_rolls_out_then_a_broken_one_is_reverted_and_halts(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
) -> None:
    """GOOD reaches all three devices through the supervisor's hand-over; BROKEN exits at
    start on every device, each supervisor restores GOOD, the devices report it, and the
    rollout halts. The agents keep their pids throughout."""
    policy = {"waves": [100], "max_parallel": 3, "soak": "1s", "max_failure_rate": 0.0}
    fleet, view = _supervised_fleet(make_fleet, release_bundles, supervised, 3, policy)
    ids = sorted(fleet.devices)
    base = release_bundles.base_version
    pids = {i: fleet.device(i).agent_pid() for i in ids}

    # -- the good runtime release ---------------------------------------------------------
    _set_runtime(fleet, GOOD)
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
    assert all(v == GOOD for v in _runtime_versions(view).values())
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
    _set_runtime(fleet, BROKEN)
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
        lambda: all(v == GOOD for v in _runtime_versions(view).values()),
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
    fleet, view = _supervised_fleet(
        make_fleet, release_bundles, supervised, 1, policy,
        server_env={"ENGINE_ROLLOUT_RETRY_BACKOFF": "1s"},
    )  # fmt: skip
    (sup,) = supervised
    device = fleet.device(sup.device.id)
    pid = device.agent_pid()
    _set_runtime(fleet, GOOD)
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
    wait_until("one runtime to run", lambda: len(_runtimes_of(sup.home)) == 1, timeout=60)
    # Counted succeeded only once the supervisor kept the new runtime (a trial the kill
    # reverted is retried by the rollout first).
    rollout = view.rollout(f"fleet@runtime-{GOOD}")
    wait_until(
        "the rollout to count the device succeeded",
        lambda: [r.state for r in view.devices(rollout.id)] == ["succeeded"],
        timeout=400,
    )
    assert sup.current() == GOOD and not sup.state().get("trial")
    assert sup.outcome()["result"] == "confirmed"
    assert _runtime_versions(view).get(device.id) == GOOD
    wait_until("one runtime to run", lambda: len(_runtimes_of(sup.home)) == 1, timeout=30)
    assert device.agent_pid() == pid
    assert device.heartbeating("3.0.0")
