"""rollout.after: a gated rollout hands out nothing until its gate completed and soaked."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.rollouts import (
    RolloutController,
    RolloutState,
    abort_rollout,
    pause_rollout,
    resume_rollout,
)
from engine.rollouts.status import rollout_status, waits_on_paused_gate
from engine.store import Store
from tests.rollouts.fleet import (
    Clock,
    SimDevice,
    apply_plan,
    device_states,
    linux_devices,
    report,
    rollout_row,
    set_release,
    write_repo,
)

CANARY = {"waves": [100], "max_parallel": 5, "soak": "10m", "max_failure_rate": 0.0}
CANARY_SOAK = timedelta(minutes=10)
FLEET = {"waves": [50, 100], "max_parallel": 5, "soak": "1m", "after": ["canary"]}


def _groups(
    canary: str = "3.0.1",
    fleet: str = "3.0.1",
    fleet_policy: dict[str, Any] | None = None,
    **canary_policy: Any,
) -> dict[str, Any]:
    return {
        "canary": {
            "match": {"tags": "internal"},
            "priority": 100,
            "agent": {"release": canary},
            "rollout": {**CANARY, **canary_policy},
        },
        "fleet": {
            "match": {"platform": "linux"},
            "agent": {"release": fleet},
            "rollout": {**FLEET, **(fleet_policy or {})},
        },
    }


class Fleet:
    """Two canaries (tag internal) and six store devices on 3.0.0, with a controller."""

    def __init__(self, tmp_path: Path, store: Store, **groups: Any) -> None:
        self.clock = Clock()
        self.store = store
        devices = {
            **linux_devices("it", 2, tags=["internal"]),
            **linux_devices("pos", 6),
        }
        self.root = write_repo(tmp_path / "repo", devices, _groups(**groups))
        store.upsert_reports([report(d, "3.0.0", self.clock.now) for d in devices])
        self.canaries = [SimDevice(d, "3.0.0") for d in sorted(devices) if d.startswith("it-")]
        self.stores = [SimDevice(d, "3.0.0") for d in sorted(devices) if d.startswith("pos-")]
        self.controller = RolloutController(store, clock=self.clock)

    def apply(self) -> dict[str, Any]:
        """Record the plan; the recorded rollouts by group."""
        result = apply_plan(self.root, self.store, self.clock.now)
        return {r.group: r for r in result.rollouts}

    def tick(self) -> None:
        """One controller tick."""
        self.controller.tick()

    def checkins(self, sims: list[SimDevice]) -> list[SimDevice]:
        """Every device of ``sims`` checks in; those given a plan."""
        return [s for s in sims if s.checkin(self.store, self.clock.now) is not None]

    def status(self, rollout_id: int) -> Any:
        """The rollout's status document."""
        with self.store.read() as conn:
            (found,) = rollout_status(conn, now=self.clock.now, rollout_id=rollout_id)
            return found

    def canaries_succeed(self) -> None:
        """The canaries take their plan and succeed; the controller judges them."""
        self.tick()
        took = self.checkins(self.canaries)
        assert len(took) == 2
        self.clock.advance(seconds=30)
        for s in took:
            s.succeed(self.store, self.clock.now)
        self.tick()


def test_gated_rollout_waits_then_opens_after_gate_completes_and_soaks(
    tmp_path: Path, store: Store
) -> None:
    """No offers while the canary runs nor while it soaks; wave 0 opens once it has soaked."""
    f = Fleet(tmp_path, store)
    recorded = f.apply()
    canary, fleet = recorded["canary"], recorded["fleet"]
    assert fleet.after == (f"canary@3.0.1 #{canary.id}",) and fleet.not_waiting == ()
    row = rollout_row(store, fleet.id)
    assert (row.state, row.reason) == ("waiting", "waiting for canary@3.0.1")
    status = f.status(fleet.id)
    assert status.after == ["canary@3.0.1"] and status.after_ids == [canary.id]
    assert [w.open for w in status.waves] == [False, False]
    assert not status.is_settled

    f.tick()
    assert f.checkins(f.stores) == []
    assert rollout_row(store, fleet.id).state == "waiting"
    f.canaries_succeed()
    assert rollout_row(store, canary.id).state == RolloutState.COMPLETED
    completed_at = f.clock.now
    row = rollout_row(store, fleet.id)
    assert row.state == "waiting"
    assert row.reason == "waiting for canary@3.0.1 to soak until 2026-11-27T10:10:30Z"
    assert f.checkins(f.stores) == []

    f.clock.advance(minutes=9, seconds=59)
    f.tick()
    assert rollout_row(store, fleet.id).state == "waiting"
    assert f.checkins(f.stores) == []
    assert set(device_states(store, fleet.id).values()) == {"pending"}

    f.clock.now = completed_at + CANARY_SOAK
    f.tick()
    row = rollout_row(store, fleet.id)
    assert (row.state, row.current_wave) == ("active", 0)
    assert row.reason == "canary@3.0.1 completed; wave 0 opened"
    took = f.checkins(f.stores)
    assert took and len(took) < len(f.stores)  # wave 0 only
    assert [w.open for w in f.status(fleet.id).waves] == [True, False]


def test_gate_halt_halts_gated_rollout_which_never_offers(tmp_path: Path, store: Store) -> None:
    """A canary that fails halts; the gated rollout halts with its reason and offers nothing."""
    f = Fleet(tmp_path, store)
    recorded = f.apply()
    canary, fleet = recorded["canary"], recorded["fleet"]
    f.tick()
    took = f.checkins(f.canaries)
    f.clock.advance(seconds=30)
    took[0].fail(store, f.clock.now)
    f.tick()
    gate = rollout_row(store, canary.id)
    assert gate.state == "halted"
    row = rollout_row(store, fleet.id)
    assert row.state == "halted"
    assert row.reason == f"canary@3.0.1 halted: {gate.reason}"
    events = [e.event for e in f.controller.events]
    assert events == ["rollout.halted", "device.failed", "rollout.halted"]
    assert f.controller.events[1].payload["device"] == took[0].name
    assert f.controller.events[2].payload["rollout"]["name"] == "fleet@3.0.1"
    for _ in range(3):
        f.clock.advance(minutes=30)
        f.tick()
        assert f.checkins(f.stores) == []
    assert set(device_states(store, fleet.id).values()) == {"pending"}
    assert [w.open for w in f.status(fleet.id).waves] == [False, False]
    # applying again starts both anew: the new fleet rollout waits for the new canary one
    again = f.apply()
    assert again["fleet"].after == (f"canary@3.0.1 #{again['canary'].id}",)
    assert again["fleet"].superseded == (fleet.id,)
    assert rollout_row(store, again["fleet"].id).state == "waiting"


def test_paused_gate_keeps_gated_rollout_waiting(tmp_path: Path, store: Store) -> None:
    """While the canary is paused the fleet waits (and says so); after resume it proceeds."""
    f = Fleet(tmp_path, store)
    recorded = f.apply()
    canary, fleet = recorded["canary"], recorded["fleet"]
    with store.write() as conn:
        pause_rollout(conn, canary.id, f.clock.now)
    for _ in range(3):
        f.clock.advance(hours=1)
        f.tick()
        assert f.checkins(f.canaries + f.stores) == []
    row = rollout_row(store, fleet.id)
    assert row.state == "waiting"
    assert row.reason == "waiting for canary@3.0.1 (paused: paused by operator)"
    with store.read() as conn:
        assert waits_on_paused_gate(conn, f.status(fleet.id))
    with store.write() as conn:
        resume_rollout(conn, canary.id, f.clock.now)
    with store.read() as conn:
        assert not waits_on_paused_gate(conn, f.status(fleet.id))
    f.canaries_succeed()
    f.clock.advance(minutes=10)
    f.tick()
    assert rollout_row(store, fleet.id).state == "active"
    assert f.checkins(f.stores)


def test_aborted_gate_halts_gated_rollout(tmp_path: Path, store: Store) -> None:
    """An operator aborting the canary halts the rollout waiting for it."""
    f = Fleet(tmp_path, store)
    recorded = f.apply()
    with store.write() as conn:
        abort_rollout(conn, recorded["canary"].id, f.clock.now)
    f.tick()
    row = rollout_row(store, recorded["fleet"].id)
    assert (row.state, row.reason) == ("halted", "canary@3.0.1 aborted: aborted by operator")
    assert f.checkins(f.stores) == []


def test_gate_on_another_release_is_no_gate(tmp_path: Path, store: Store) -> None:
    """A group in after already on a newer release (canary first) does not hold the rollout."""
    f = Fleet(tmp_path, store, canary="3.0.2")
    recorded = f.apply()
    fleet = recorded["fleet"]
    assert fleet.after == () and fleet.not_waiting == ("canary",)
    row = rollout_row(store, fleet.id)
    assert (row.state, row.after_ids) == ("active", None)
    f.tick()
    assert f.checkins(f.stores)


def test_gate_recorded_by_an_earlier_apply(tmp_path: Path, store: Store) -> None:
    """The canary's live rollout of the release from an earlier apply gates the fleet."""
    f = Fleet(tmp_path, store, fleet="3.0.0")
    canary = f.apply()["canary"]
    f.canaries_succeed()
    assert rollout_row(store, canary.id).state == "completed"
    set_release(f.root, "fleet", "3.0.1")
    fleet = f.apply()["fleet"]
    assert fleet.after == (f"canary@3.0.1 #{canary.id}",)
    f.tick()
    assert rollout_row(store, fleet.id).state == "waiting"  # the canary soaks 10m
    f.clock.advance(minutes=10)
    f.tick()
    assert rollout_row(store, fleet.id).state == "active"


def test_pause_and_resume_of_a_waiting_rollout(tmp_path: Path, store: Store) -> None:
    """A waiting rollout paused stays closed when its gate completes; resumed, it waits again."""
    f = Fleet(tmp_path, store)
    recorded = f.apply()
    fleet = recorded["fleet"].id
    with store.write() as conn:
        pause_rollout(conn, fleet, f.clock.now)
    f.canaries_succeed()
    f.clock.advance(hours=1)
    f.tick()
    assert rollout_row(store, fleet).state == "paused"
    assert f.checkins(f.stores) == []
    with store.write() as conn:
        resume_rollout(conn, fleet, f.clock.now)
    assert rollout_row(store, fleet).state == "waiting"
    f.tick()
    assert rollout_row(store, fleet).state == "active"
    assert f.checkins(f.stores)


@pytest.mark.parametrize("gate_state", ["active", "completed"])
def test_reapply_keeps_the_waiting_rollout(tmp_path: Path, store: Store, gate_state: str) -> None:
    """Applying the same release again records nothing new for a waiting rollout."""
    f = Fleet(tmp_path, store)
    first = f.apply()
    if gate_state == "completed":
        f.canaries_succeed()
    assert rollout_row(store, first["canary"].id).state == gate_state
    assert f.apply() == {}
    assert rollout_row(store, first["fleet"].id).state == "waiting"


def test_apply_and_status_show_the_wait(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """apply says what a rollout waits for; status shows it waiting with no wave open;
    apply --wait stops following once the gate is paused."""
    import threading
    from datetime import UTC, datetime

    from engine.cli import main

    root = tmp_path / "repo"
    with Store.open(f"sqlite:///{root / '.engine' / 'state.db'}") as store:
        Fleet(root.parent, store)  # writes the repo and the reports
    assert main(["plan", "-C", str(root)]) == 0
    assert "fleet@3.0.1  after canary  (waves 50/100%" in capsys.readouterr().out

    def pause_canary() -> None:
        with Store.open(f"sqlite:///{root / '.engine' / 'state.db'}") as store:
            for _ in range(200):
                with store.write() as conn:
                    if conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one() == 2:
                        pause_rollout(conn, 1, datetime.now(UTC))
                        return
                threading.Event().wait(0.05)

    thread = threading.Thread(target=pause_canary)
    thread.start()
    try:
        code = main(
            ["apply", "-C", str(root), "--yes", "--allow-unsigned", "--wait", "--poll", "0.05"]
        )
    finally:
        thread.join(15)
    out = capsys.readouterr().out
    assert code == 1
    assert (
        "Recorded rollout #2 fleet@3.0.1: 6 devices (6 to move, 0 already there, 0 excluded);"
        " waits for canary@3.0.1 #1" in out
    )
    assert "#1 canary@3.0.1: paused;" in out
    assert (
        "#2 fleet@3.0.1: waiting; 0 succeeded, 0 failed, 0 rolled back, 6 offline "
        "(waiting for canary@3.0.1)" in out
    )
    assert main(["status", "-C", str(root)]) == 0
    out = capsys.readouterr().out
    assert "#2 fleet@3.0.1  waiting  no wave open (of 2)" in out
    assert "waiting for canary@3.0.1" in out


def _wave_of(store: Store, rollout_id: int, device: str) -> int:
    with store.read() as conn:
        return int(
            conn.exec_driver_sql(
                f"SELECT wave FROM rollout_devices WHERE rollout_id = {rollout_id} "
                f"AND device = '{device}'"
            ).scalar_one()
        )


@pytest.mark.parametrize("scope", ["rollout", "release"])
def test_halt_in_the_second_wave_rolls_back_by_scope(
    tmp_path: Path, store: Store, scope: str
) -> None:
    """A release that passed the canary fails in the fleet's second wave: rollback: rollout sends
    the fleet's devices back only; rollback: release halts the canary rollout too and sends the
    canaries back to the previous release."""
    policy = {"waves": [20, 100], "on_failure": {"action": "halt", "rollback": scope}}
    f = Fleet(tmp_path, store, fleet_policy=policy)
    recorded = f.apply()
    canary, fleet = recorded["canary"], recorded["fleet"]
    f.canaries_succeed()
    f.clock.advance(minutes=10)
    f.tick()
    failed = None
    for _ in range(20):  # wave 0 succeeds; the first device of wave 1 fails
        took = f.checkins([s for s in f.stores if s.version == "3.0.0"])
        f.clock.advance(seconds=30)
        for s in took:
            if _wave_of(store, fleet.id, s.name) == 0:
                s.succeed(store, f.clock.now)
            elif failed is None:
                failed = s
        if failed is not None:
            break
        f.tick()
        f.clock.advance(minutes=1)
        f.tick()
    assert failed is not None and rollout_row(store, fleet.id).current_wave == 1
    failed.fail(store, f.clock.now)
    f.tick()
    assert rollout_row(store, fleet.id).state == "halted"
    gate = rollout_row(store, canary.id)
    back = f.checkins(f.canaries)
    if scope == "rollout":
        assert gate.state == "completed"
        assert back == []
        return
    assert gate.state == "halted"
    assert gate.reason is not None and gate.reason.startswith(
        "rollout fleet@3.0.1 halted with rollback: release (wave 1: "
    )
    assert set(device_states(store, canary.id).values()) == {"rolling_back"}
    offers = [s.plan.plan for s in back if s.plan is not None]
    assert [(o.action.value, str(o.desired)) for o in offers] == [
        ("rollback", "3.0.0"),
        ("rollback", "3.0.0"),
    ]
    f.clock.advance(seconds=30)
    for s in f.canaries:
        s.succeed(store, f.clock.now)
    f.tick()
    assert set(device_states(store, canary.id).values()) == {"rolled_back"}
    assert {s.version for s in f.canaries} == {"3.0.0"}
