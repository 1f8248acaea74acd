"""Offers at check-in: maintenance windows, late enrollment, pins, priorities, aborted rollouts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from engine.rollouts import RolloutController, abort_rollout
from engine.store import Store
from engine.waves import wave_fraction
from tests.rollouts.fleet import (
    Clock,
    SimDevice,
    apply_plan,
    device_states,
    device_waves,
    linux_devices,
    plan_now,
    report,
    rollout_row,
    write_repo,
)

BERLIN_NIGHTS = {"cron": "0 2 * * *", "duration": "3h", "timezone": "Europe/Berlin"}


def _group(release: str, **extra: object) -> dict[str, object]:
    return {"match": {"platform": "linux"}, "agent": {"release": release}, **extra}


def test_offers_only_inside_maintenance_window(tmp_path: Path, store: Store) -> None:
    """Outside the window (Berlin time) nothing is offered; inside it is; it closes on time."""
    clock = Clock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))  # 11:00 in Berlin
    devices = linux_devices("srv", 6)
    root = write_repo(
        tmp_path / "repo",
        devices,
        {"prod": _group("3.0.1", rollout={"waves": [100]}, maintenance_window=BERLIN_NIGHTS)},
    )
    sims = [SimDevice(d, "3.0.0") for d in sorted(devices)]
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    controller = RolloutController(store, clock=clock)
    for hour in range(11):  # 10:00Z .. 20:00Z: 11:00 .. 21:00 in Berlin
        controller.tick()
        assert all(s.checkin(store, clock.now) is None for s in sims), hour
        clock.advance(hours=1)
    assert set(device_states(store, recorded.id).values()) == {"pending"}

    clock.now = datetime(2026, 11, 28, 0, 59, tzinfo=UTC)  # 01:59 in Berlin
    controller.tick()
    assert all(s.checkin(store, clock.now) is None for s in sims)
    clock.now = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # 02:00 in Berlin: opens
    controller.tick()
    first, second, *_ = sims
    offer = first.checkin(store, clock.now)
    assert offer is not None and str(offer.plan.desired) == "3.0.1"
    clock.now = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)  # 05:00 in Berlin: closed again
    assert second.checkin(store, clock.now) is None
    assert device_states(store, recorded.id)[second.name] == "offered"


def test_late_enrolled_device_joins_its_stable_wave(tmp_path: Path, store: Store) -> None:
    """A device without a report at apply waits in its plan wave; updated once it reports."""
    clock = Clock()
    early = linux_devices("old", 4)
    late = linux_devices("new", 8)
    # Wave 0 holds 3 early and 5 late devices: offline late ones count against its rate.
    policy = {"waves": [50, 100], "soak": "0s", "min_success_rate": 0.35, "max_parallel": 20}
    root = write_repo(
        tmp_path / "repo", {**early, **late}, {"prod": _group("3.0.1", rollout=policy)}
    )
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in early])
    plan = plan_now(root, store.url, clock.now)
    planned_wave = {d.device: d.wave for d in plan.devices}
    (recorded,) = apply_plan(root, store, clock.now, plan).rollouts
    waves = device_waves(store, recorded.id)
    assert {d: waves[d] for d in late} == {d: planned_wave[d] for d in late}
    states = device_states(store, recorded.id)
    assert all(states[d] == "pending" for d in late)
    late_in_wave1 = [d for d in late if waves[d] == 1]
    assert late_in_wave1, "pick other names: no late device fell into wave 1"

    controller = RolloutController(store, clock=clock)
    newcomer = SimDevice(late_in_wave1[0], "3.0.0")
    # Enrolls and reports while wave 0 is still open: not offered yet.
    controller.tick()
    assert newcomer.checkin(store, clock.now) is None
    controller.tick()
    assert newcomer.checkin(store, clock.now) is None
    assert rollout_row(store, recorded.id).current_wave == 0
    # Wave 0 (the early devices there) succeeds: wave 1 opens and the newcomer is offered.
    for _ in range(5):
        sims = [SimDevice(d, "3.0.0") for d in early if waves[d] == 0]
        for s in sims:
            if s.checkin(store, clock.now) is not None:
                clock.advance(seconds=5)
                s.succeed(store, clock.now)
        clock.advance(seconds=5)
        controller.tick()
        if rollout_row(store, recorded.id).current_wave == 1:
            break
    assert rollout_row(store, recorded.id).current_wave == 1
    offer = newcomer.checkin(store, clock.now)
    assert offer is not None and offer.plan.wave == 1 == waves[newcomer.name]
    assert waves[newcomer.name] == (0 if wave_fraction("prod", newcomer.name) * 100 < 50 else 1)


def test_pinned_device_is_never_offered(tmp_path: Path, store: Store) -> None:
    """A device with a pin is excluded from its group's rollout and never gets a plan."""
    clock = Clock()
    devices = linux_devices("srv", 5)
    devices["srv-0000"]["pin"] = "3.0.0"  # held against the group: not in its rollout
    devices["srv-0001"]["pin"] = "3.0.1"  # pinned to the group's release: excluded anyway
    root = write_repo(
        tmp_path / "repo",
        devices,
        {"prod": _group("3.0.1", rollout={"waves": [100], "soak": "0s"})},
    )
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    controller = RolloutController(store, clock=clock)
    sims = [SimDevice(d, "3.0.0") for d in sorted(devices)]
    pinned = sims[:2]
    for _ in range(5):
        controller.tick()
        assert all(p.checkin(store, clock.now) is None for p in pinned)
        for s in sims[2:]:
            if s.checkin(store, clock.now) is not None:
                clock.advance(seconds=5)
                s.succeed(store, clock.now)
        clock.advance(minutes=1)
    controller.tick()
    assert rollout_row(store, recorded.id).state == "completed"
    states = device_states(store, recorded.id)
    assert "srv-0000" not in states
    assert states.pop("srv-0001") == "excluded"
    assert set(states.values()) == {"succeeded"}
    assert [p.version for p in pinned] == ["3.0.0", "3.0.0"]


def test_overlapping_rollouts_resolved_by_priority(tmp_path: Path, store: Store) -> None:
    """A device held by two live rollouts is offered the release of the higher-priority group."""
    clock = Clock()
    devices = linux_devices("srv", 4)
    devices["srv-0000"]["tags"] = ["canary"]
    groups = {
        "canary": {
            "match": {"tags": "canary"},
            "priority": 10,
            "agent": {"release": "3.0.2"},
            "rollout": {"waves": [100]},
        },
        "prod": _group("3.0.1", rollout={"waves": [100]}),
    }
    root = write_repo(tmp_path / "repo", devices, groups)
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    canary, prod = sorted(apply_plan(root, store, clock.now).rollouts, key=lambda r: r.group)
    assert (canary.devices, prod.devices) == (1, 3)
    # srv-0000 loses its tag: the plan puts it in prod, whose live rollout takes it in,
    # but the canary rollout (priority 10) still holds it.
    data = yaml.safe_load((root / "inventory" / "fleet.yaml").read_text())
    data["devices"]["srv-0000"]["tags"] = []
    (root / "inventory" / "fleet.yaml").write_text(yaml.safe_dump(data))
    result = apply_plan(root, store, clock.now)
    assert result.rollouts == [] and any("1 new devices joined" in m for m in result.unchanged)
    assert device_states(store, prod.id)["srv-0000"] == "overridden"
    controller = RolloutController(store, clock=clock)
    controller.tick()
    offer = SimDevice("srv-0000", "3.0.0").checkin(store, clock.now)
    assert offer is not None
    assert str(offer.plan.desired) == "3.0.2" and offer.plan.rollout == "canary@3.0.2"

    # srv-0001 gains the tag: the canary rollout takes it from prod (higher priority).
    data["devices"]["srv-0001"]["tags"] = ["canary"]
    (root / "inventory" / "fleet.yaml").write_text(yaml.safe_dump(data))
    apply_plan(root, store, clock.now)
    assert device_states(store, prod.id)["srv-0001"] == "overridden"
    assert device_states(store, canary.id)["srv-0001"] == "pending"


def test_aborted_rollout_hands_out_nothing(tmp_path: Path, store: Store) -> None:
    """After abort, offered devices get nothing and the controller offers no more."""
    clock = Clock()
    devices = linux_devices("srv", 4)
    root = write_repo(
        tmp_path / "repo", devices, {"prod": _group("3.0.1", rollout={"waves": [100]})}
    )
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    controller = RolloutController(store, clock=clock)
    controller.tick()
    assert set(device_states(store, recorded.id).values()) == {"offered"}
    with store.write() as conn:
        abort_rollout(conn, recorded.id, clock.now)
    controller.tick()
    assert all(SimDevice(d, "3.0.0").checkin(store, clock.now) is None for d in devices)
    assert set(device_states(store, recorded.id).values()) == {"cancelled"}
    assert rollout_row(store, recorded.id).state == "aborted"
