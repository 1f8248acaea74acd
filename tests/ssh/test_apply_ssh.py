"""`engine apply --transport ssh`: agentless devices converge through the rollout controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import events, rollout_devices, rollouts
from engine.waves import assign_waves
from tests.harness.sshd import Sshd
from tests.ssh.fleet import SshFleet

pytestmark = pytest.mark.slow

IDS = ["ssh-a", "ssh-b", "ssh-c"]
POLICY = {"waves": [1, 100], "soak": "1s", "max_parallel": 3, "min_success_rate": 1.0,
          "max_failure_rate": 0.0}  # fmt: skip


@pytest.fixture
def fleet(sshd: Sshd, tmp_path: Path) -> Iterator[SshFleet]:
    """Three agentless devices on 127.0.0.1 and a running `engine serve`."""
    made = SshFleet(tmp_path, sshd, IDS, POLICY)
    made.install_runtime_link()
    made.server.start()
    yield made
    made.stop()


def _rows(fleet: SshFleet, name: str) -> tuple[str, dict[str, tuple[int, str]]]:
    url = f"sqlite:///{fleet.repo.root / '.engine' / 'state.db'}"
    with Store.open(url, migrate=False) as store, store.read() as conn:
        r = conn.execute(select(rollouts).where(rollouts.c.name == name)).one()
        devs = conn.execute(select(rollout_devices).where(rollout_devices.c.rollout_id == r.id))
        return str(r.state), {d.device: (int(d.wave), str(d.state)) for d in devs}


def _steps(fleet: SshFleet) -> dict[str, set[tuple[str, str, str]]]:
    """Each device's step events in the store: (target, step, status)."""
    url = f"sqlite:///{fleet.repo.root / '.engine' / 'state.db'}"
    out: dict[str, set[tuple[str, str, str]]] = {d: set() for d in IDS}
    with Store.open(url, migrate=False) as store, store.read() as conn:
        for e in conn.execute(select(events)):
            out[e.device].add((e.target, e.step, e.status))
    return out


def test_ssh_rollout_in_two_waves_then_broken_release_halts_and_rolls_back(
    fleet: SshFleet,
) -> None:
    """3.0.0 is installed on three agentless SSH devices from nothing, 3.0.1 commits on all
    three in two waves, and the broken 3.0.2 halts after the first wave with that device
    back on 3.0.1 and the others never touched; each step is recorded as a step event, as
    for pull-mode devices."""
    done = fleet.apply()
    assert done.returncode == 0, done.stdout + done.stderr
    assert {d: fleet.state(d)["installed"] for d in IDS} == dict.fromkeys(IDS, "3.0.0")

    fleet.repo.set_release("3.0.1")
    done = fleet.apply()
    assert done.returncode == 0, done.stdout + done.stderr
    state, devices = _rows(fleet, "fleet@3.0.1")
    assert state == "completed"
    assert {w for w, _ in devices.values()} == {0, 1}
    assert {s for _, s in devices.values()} == {"succeeded"}
    for d in IDS:
        assert fleet.state(d)["installed"] == "3.0.1"
        assert {("3.0.1", s, "ok") for s in ("download", "verify", "swap", "commit")} <= (
            _steps(fleet)[d]
        )

    waves = assign_waves("fleet", [(d, True) for d in IDS], [1, 100])
    canary = [d for d, w in waves.items() if w == 0]
    assert len(canary) == 1
    fleet.repo.set_release("3.0.2")
    done = fleet.apply()
    assert done.returncode == 1, done.stdout + done.stderr
    state, devices = _rows(fleet, "fleet@3.0.2")
    assert state == "halted", done.stdout + done.stderr
    assert devices[canary[0]][1] == "failed"
    assert all(s == "pending" for d, (_, s) in devices.items() if d != canary[0])
    for d in IDS:
        s = fleet.state(d)
        assert s["installed"] == "3.0.1", (d, s)
    assert fleet.state(canary[0])["last_result"] == "rolled_back"
    steps = _steps(fleet)
    assert ("3.0.2", "confirm_heartbeat", "failed") in steps[canary[0]], steps[canary[0]]
    assert any(s.startswith("rollback") for t, s, _ in steps[canary[0]] if t == "3.0.2")
    assert all(t != "3.0.2" for d in IDS if d != canary[0] for t, _, _ in steps[d])
    assert "fleet@3.0.2: halted" in done.stdout
