"""Failure handling: halt with rollbacks and a signed webhook, pause, timeouts, retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.rollouts import (
    RolloutController,
    RolloutState,
    Timings,
    resume_rollout,
    verify_signature,
)
from engine.store import Store
from states.plan import Action
from tests.harness import wait_until
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
from tests.rollouts.receiver import webhook_receiver

SECRET = "s3cret-for-tests"


def _setup(
    tmp_path: Path, store: Store, clock: Clock, **policy: Any
) -> tuple[int, list[SimDevice], dict[str, int]]:
    """Ten devices on 3.0.1; group prod moves to 3.0.2 with ``policy``."""
    rollout = {"waves": [30, 100], "max_parallel": 10, "soak": "0s", "min_success_rate": 0.9}
    rollout.update(policy)
    devices = linux_devices("box", 10)
    root = write_repo(
        tmp_path / "repo",
        devices,
        {
            "prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.2"},
                "rollout": rollout,
            }
        },
    )
    store.upsert_reports([report(d, "3.0.1", clock.now, "committed") for d in devices])
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    waves = device_waves(store, recorded.id)
    return recorded.id, [SimDevice(d, "3.0.1", "committed") for d in sorted(devices)], waves


def test_failure_rate_halts_rolls_back_and_notifies(tmp_path: Path, store: Store) -> None:
    """A failing canary wave halts, plans takers back to 3.0.1 and POSTs a signed webhook."""
    clock = Clock()
    rid, sims, waves = _setup(tmp_path, store, clock, max_failure_rate=0.2)
    wave0 = [s for s in sims if waves[s.name] == 0]
    later = [s for s in sims if waves[s.name] > 0]
    assert len(wave0) >= 2 and later
    with webhook_receiver() as receiver:
        controller = RolloutController(
            store, clock=clock, webhook_url=receiver.url, webhook_secret=SECRET
        )
        controller.tick()
        assert all(s.checkin(store, clock.now) is not None for s in wave0)
        assert all(s.checkin(store, clock.now) is None for s in later)
        clock.advance(minutes=1)
        wave0[0].succeed(store, clock.now)
        for s in wave0[1:]:
            s.fail(store, clock.now)
        clock.advance(seconds=10)
        controller.tick()
        wait_until(
            "the halted webhook",
            lambda: any(d.headers["X-Fleet-Event"] == "rollout.halted" for d in
                        receiver.deliveries),
            timeout=20,
        )  # fmt: skip
        controller.close()
    row = rollout_row(store, rid)
    assert row.state == RolloutState.HALTED
    assert "max_failure_rate" in row.reason
    states = device_states(store, rid)
    assert states[wave0[0].name] == "rollback"
    assert all(states[s.name] == "failed" for s in wave0[1:])
    assert all(states[s.name] == "pending" for s in later)

    (delivery,) = [d for d in receiver.deliveries if d.headers["X-Fleet-Event"] == "rollout.halted"]
    failed = [json.loads(d.body) for d in receiver.deliveries
              if d.headers["X-Fleet-Event"] == "device.failed"]  # fmt: skip
    assert sorted(f["device"] for f in failed) == sorted(s.name for s in wave0[1:])
    assert all(f["rollout"]["id"] == rid for f in failed)
    assert verify_signature(SECRET, delivery.body, delivery.headers["X-Fleet-Signature"])
    assert not verify_signature("wrong", delivery.body, delivery.headers["X-Fleet-Signature"])
    payload = json.loads(delivery.body)
    assert payload["event"] == "rollout.halted" == delivery.headers["X-Fleet-Event"]
    assert payload["rollout"]["id"] == rid and payload["rollout"]["state"] == "halted"

    # The device that took 3.0.2 is planned back to 3.0.1; later waves get nothing.
    taker = wave0[0]
    offer = taker.checkin(store, clock.now)
    assert offer is not None
    assert offer.plan.action is Action.ROLLBACK
    assert str(offer.plan.desired) == "3.0.1" and str(offer.release.version) == "3.0.1"
    assert offer.release.manifest == "/v1/releases/3.0.1/manifest"
    assert all(s.checkin(store, clock.now) is None for s in later + wave0[1:])
    clock.advance(minutes=1)
    taker.succeed(store, clock.now)
    controller = RolloutController(store, clock=clock)
    controller.tick()
    assert device_states(store, rid)[taker.name] == "rolled_back"
    assert all(device_states(store, rid)[s.name] == "pending" for s in later)


def test_on_failure_pause_stops_offers_until_resumed(tmp_path: Path, store: Store) -> None:
    """on_failure pause: no new offers until resumed; in-progress devices finish."""
    clock = Clock()
    rid, sims, _ = _setup(
        tmp_path,
        store,
        clock,
        max_failure_rate=0.05,
        on_failure="pause",
        max_parallel=1,
        waves=[100],
    )
    controller = RolloutController(store, clock=clock)
    controller.tick()
    (first,) = [s for s in sims if s.checkin(store, clock.now) is not None]
    clock.advance(minutes=1)
    first.fail(store, clock.now)
    clock.advance(seconds=1)
    controller.tick()
    assert rollout_row(store, rid).state == RolloutState.PAUSED
    assert controller.events[0].event == "rollout.paused"
    for _ in range(3):
        clock.advance(minutes=5)
        controller.tick()
        assert all(s.checkin(store, clock.now) is None for s in sims)
    with store.write() as conn:
        resume_rollout(conn, rid, clock.now)
    controller.tick()
    assert rollout_row(store, rid).state == RolloutState.ACTIVE
    assert sum(1 for s in sims if s.checkin(store, clock.now) is not None) == 1


def test_silent_device_times_out_and_is_retried(tmp_path: Path, store: Store) -> None:
    """A device silent past update_timeout after taking its plan times out, then is retried."""
    clock = Clock()
    timings = Timings()
    rid, sims, _ = _setup(tmp_path, store, clock, max_failure_rate=1.0, waves=[100])
    controller = RolloutController(store, clock=clock, timings=timings)
    controller.tick()
    taker = sims[0]  # the others never check in again
    assert taker.checkin(store, clock.now) is not None
    clock.now += timings.update_timeout / 2
    controller.tick()
    assert device_states(store, rid)[taker.name] == "in_progress"
    clock.now += timings.update_timeout / 2
    controller.tick()
    assert device_states(store, rid)[taker.name] == "timed_out"
    # Back after the backoff: its check-in shows it online, the next tick offers it again.
    clock.now += timings.retry_delay(1)
    controller.tick()
    taker.plan = None
    assert taker.checkin(store, clock.now) is None
    controller.tick()
    offer = taker.checkin(store, clock.now)
    assert offer is not None and str(offer.plan.desired) == "3.0.2"


def test_failed_device_retried_with_backoff_up_to_limit(tmp_path: Path, store: Store) -> None:
    """A failed device waits 1, then 2 backoff units; it stops after max_attempts."""
    clock = Clock()
    timings = Timings(max_attempts=3)
    rid, sims, _ = _setup(tmp_path, store, clock, max_failure_rate=1.0, waves=[100])
    controller = RolloutController(store, clock=clock, timings=timings)
    controller.tick()
    device = sims[0]  # the others never check in again
    assert device.checkin(store, clock.now) is not None
    for attempt in (1, 2, 3):
        clock.advance(seconds=30)
        device.fail(store, clock.now)
        clock.advance(seconds=1)
        controller.tick()
        assert device_states(store, rid)[device.name] == "failed"
        if attempt == 3:
            break
        delay = timings.retry_delay(attempt)
        assert delay == timings.retry_backoff * 2 ** (attempt - 1)
        clock.now += delay - delay / 10
        controller.tick()
        assert device.checkin(store, clock.now) is None, "retried before its backoff elapsed"
        clock.now += delay / 10
        controller.tick()
        assert device.checkin(store, clock.now) is not None
    for _ in range(3):
        clock.advance(hours=1)
        controller.tick()
        assert device.checkin(store, clock.now) is None
    assert device_states(store, rid)[device.name] == "failed"
