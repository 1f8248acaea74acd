"""The performance policy in the controller: a device whose agent grew past max_rss_increase
fails, goes back to its release, and halts the rollout — also a canary that completed and
soaks, which halts the rollout waiting for it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import insert

from engine.rollouts import RolloutController, RolloutState
from engine.store import Store
from engine.store.schema import performance
from states.plan import Action
from tests.rollouts.fleet import (
    Clock,
    SimDevice,
    apply_plan,
    device_states,
    linux_devices,
    report,
    rollout_row,
    write_repo,
)

MB = 1_000_000


def sampled(store: Store, device: str, version: str, rss: int, now: datetime) -> None:
    """Three samples of the agent on ``version`` at ``rss`` bytes, as check-ins store them."""
    with store.write() as conn:
        conn.execute(
            insert(performance).values(
                device=device, version=version, samples=3, cpu_samples=3, cpu_sum=3.0,
                rss_sum=3 * rss, rss_last=rss, rss_max=rss, first_at=now, last_at=now,
            )
        )  # fmt: skip


def test_completed_canary_halts_on_memory_and_the_waiting_fleet_halts(
    tmp_path: Path, store: Store
) -> None:
    """The canary group (one wave) completes on 3.0.2; during its soak one device's agent
    shows twice the memory it had on 3.0.1: that device is failed with the figures and gets
    a rollback plan, the canary rollout halts (its other devices go back too), and the fleet
    rollout waiting for it (after: [canary]) halts without offering anything."""
    clock = Clock()
    canaries = linux_devices("canary", 3, tags=["internal"])
    fleet = linux_devices("store", 4)
    limits = {"soak": "10m", "max_failure_rate": 0.0, "max_rss_increase": "25%"}
    root = write_repo(
        tmp_path / "repo",
        canaries | fleet,
        {
            "canary": {"match": {"tags": "internal"}, "priority": 100,
                       "agent": {"release": "3.0.2"}, "rollout": {"waves": [100], **limits}},
            "fleet": {"match": {"platform": "linux"}, "agent": {"release": "3.0.2"},
                      "rollout": {"waves": [100], "after": ["canary"], **limits}},
        },
    )  # fmt: skip
    store.upsert_reports([report(d, "3.0.1", clock.now, "committed") for d in canaries | fleet])
    for d in canaries:
        sampled(store, d, "3.0.1", 20 * MB, clock.now)
    canary, waiting = sorted(apply_plan(root, store, clock.now).rollouts, key=lambda r: r.name)
    sims = [SimDevice(d, "3.0.1", "committed") for d in sorted(canaries)]
    controller = RolloutController(store, clock=clock)
    controller.tick()
    assert all(s.checkin(store, clock.now) is not None for s in sims)
    clock.advance(seconds=30)
    for s in sims:
        s.succeed(store, clock.now)
    clock.advance(seconds=5)
    controller.tick()
    assert rollout_row(store, canary.id).state == RolloutState.COMPLETED.value
    assert rollout_row(store, waiting.id).state == RolloutState.WAITING.value

    leaking, *others = sims
    sampled(store, leaking.name, "3.0.2", 50 * MB, clock.now)
    for s in others:
        sampled(store, s.name, "3.0.2", 21 * MB, clock.now)
    clock.advance(seconds=5)
    controller.tick()
    row = rollout_row(store, canary.id)
    assert row.state == RolloutState.HALTED.value and row.completed_at is None
    assert "memory 50.0 MB on 3.0.2 vs 20.0 MB on 3.0.1 (+150%)" in row.reason
    assert row.reason.startswith("wave 0: 1 of 3 devices failed")
    states = device_states(store, canary.id)
    assert states[leaking.name] == "regressed"
    assert {states[s.name] for s in others} == {"rollback"}
    controller.tick()
    assert rollout_row(store, waiting.id).state == RolloutState.HALTED.value
    assert set(device_states(store, waiting.id).values()) <= {"pending", "cancelled"}

    offer = leaking.checkin(store, clock.now)
    assert offer is not None and offer.plan.action is Action.ROLLBACK
    assert str(offer.plan.desired) == "3.0.1"
    leaking.succeed(store, clock.now)  # back on 3.0.1: nothing more to do
    assert leaking.checkin(store, clock.now) is None
    assert device_states(store, canary.id)[leaking.name] == "regressed"  # still counted


def test_within_the_limit_nothing_happens(tmp_path: Path, store: Store) -> None:
    """Memory within max_rss_increase: the rollout completes and stays completed."""
    clock = Clock()
    devices = linux_devices("box", 2)
    root = write_repo(
        tmp_path / "repo",
        devices,
        {"prod": {"match": {"platform": "linux"}, "agent": {"release": "3.0.2"},
                  "rollout": {"waves": [100], "soak": "10m", "max_rss_increase": "25%"}}},
    )  # fmt: skip
    store.upsert_reports([report(d, "3.0.1", clock.now, "committed") for d in devices])
    for d in devices:
        sampled(store, d, "3.0.1", 20 * MB, clock.now)
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    sims = [SimDevice(d, "3.0.1", "committed") for d in sorted(devices)]
    controller = RolloutController(store, clock=clock)
    controller.tick()
    assert all(s.checkin(store, clock.now) is not None for s in sims)
    clock.advance(seconds=30)
    for s in sims:
        s.succeed(store, clock.now)
        sampled(store, s.name, "3.0.2", 24 * MB, clock.now)
    clock.advance(seconds=5)
    controller.tick()
    controller.tick()
    assert rollout_row(store, recorded.id).state == RolloutState.COMPLETED.value
    assert set(device_states(store, recorded.id).values()) == {"succeeded"}
