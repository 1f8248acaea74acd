"""Waves open in order after min_success_rate and soak; max_parallel bounds updates."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.rollouts import RolloutController, RolloutState, Timings
from engine.store import Store
from tests.rollouts.fleet import (
    Clock,
    SimDevice,
    apply_plan,
    device_states,
    device_waves,
    linux_devices,
    report,
    rollout_row,
    write_repo,
)

POLICY: dict[str, Any] = {
    "waves": [10, 50, 100],
    "soak": "10m",
    "max_parallel": 3,
    "min_success_rate": 0.9,
    "max_failure_rate": 0.5,
}


def _fleet(tmp_path: Path, store: Store, clock: Clock, count: int = 20) -> list[SimDevice]:
    devices = linux_devices("srv", count)
    write_repo(
        tmp_path / "repo",
        devices,
        {
            "prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.1"},
                "rollout": POLICY,
            }
        },
    )
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    return [SimDevice(d, "3.0.0") for d in devices]


def _round(store: Store, sims: list[SimDevice], clock: Clock) -> list[SimDevice]:
    """Every device checks in; those given a plan succeed. Returns those updated."""
    took = [s for s in sims if s.checkin(store, clock.now) is not None]
    if took:
        clock.advance(seconds=30)
    for s in took:
        s.succeed(store, clock.now)
    return took


def test_waves_open_in_order_after_success_and_soak(tmp_path: Path, store: Store) -> None:
    """Wave k+1 opens only after wave k met min_success_rate and soaked; max_parallel holds."""
    clock = Clock()
    sims = _fleet(tmp_path, store, clock)
    result = apply_plan(tmp_path / "repo", store, clock.now)
    (recorded,) = result.rollouts
    waves = device_waves(store, recorded.id)
    controller = RolloutController(store, clock=clock, timings=Timings())
    order: list[int] = []
    for _ in range(200):
        controller.tick()
        states = device_states(store, recorded.id)
        busy = sum(1 for s in states.values() if s in ("offered", "in_progress"))
        assert busy <= POLICY["max_parallel"]
        row = rollout_row(store, recorded.id)
        offered = {d for d, s in states.items() if s == "offered"}
        assert all(waves[d] <= row.current_wave for d in offered)
        took = _round(store, sims, clock)
        order.extend(waves[s.name] for s in took)
        if row.state == RolloutState.COMPLETED:
            break
        clock.advance(minutes=1)
    row = rollout_row(store, recorded.id)
    assert row.state == RolloutState.COMPLETED
    assert order == sorted(order), "a later wave updated before an earlier one finished"
    assert set(device_states(store, recorded.id).values()) == {"succeeded"}
    assert all(s.version == "3.0.1" for s in sims)


def test_next_wave_waits_for_soak(tmp_path: Path, store: Store) -> None:
    """After wave 0 succeeds, wave 1 stays closed until the soak time has passed."""
    clock = Clock()
    sims = _fleet(tmp_path, store, clock)
    (recorded,) = apply_plan(tmp_path / "repo", store, clock.now).rollouts
    waves = device_waves(store, recorded.id)
    controller = RolloutController(store, clock=clock)
    wave0 = [s for s in sims if waves[s.name] == 0]
    assert 1 <= len(wave0) <= 3
    controller.tick()
    took = _round(store, sims, clock)
    assert {s.name for s in took} == {s.name for s in wave0}
    controller.tick()  # judges wave 0: succeeded, soak starts now
    met = clock.now
    assert rollout_row(store, recorded.id).current_wave == 0
    clock.advance(minutes=9, seconds=59)
    controller.tick()
    assert rollout_row(store, recorded.id).current_wave == 0
    assert _round(store, sims, clock) == []
    clock.now = met + timedelta(minutes=10)
    controller.tick()
    assert rollout_row(store, recorded.id).current_wave == 1
    took = _round(store, sims, clock)
    assert took and all(waves[s.name] == 1 for s in took)
    assert len(took) <= POLICY["max_parallel"]


def test_wave_below_success_rate_stays_closed(tmp_path: Path, store: Store) -> None:
    """A wave whose devices do not report success never opens the next, however long one waits."""
    clock = Clock()
    sims = _fleet(tmp_path, store, clock)
    (recorded,) = apply_plan(tmp_path / "repo", store, clock.now).rollouts
    controller = RolloutController(
        store, clock=clock, timings=Timings(update_timeout=Timings().update_timeout * 100)
    )
    controller.tick()
    took = [s for s in sims if s.checkin(store, clock.now) is not None]
    assert took
    for _ in range(5):  # they took the plan but never report back
        clock.advance(hours=1)
        controller.tick()
    assert rollout_row(store, recorded.id).current_wave == 0
    assert rollout_row(store, recorded.id).state == RolloutState.ACTIVE
