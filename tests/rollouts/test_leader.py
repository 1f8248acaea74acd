"""Only one controller acts on a store: PostgreSQL advisory lock, SQLite lease."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from engine.rollouts import RolloutController, Timings
from engine.store import Store
from tests.rollouts.fleet import Clock, apply_plan, device_states, linux_devices, report, write_repo


def _recorded(tmp_path: Path, store: Store, clock: Clock) -> int:
    devices = linux_devices("srv", 4)
    root = write_repo(
        tmp_path / "repo",
        devices,
        {
            "prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.1"},
                "rollout": {"waves": [100]},
            }
        },
    )
    store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    return recorded.id


def test_two_controllers_only_one_acts(tmp_path: Path, store: Store) -> None:
    """With two controllers on one store only the lock holder acts, until it lets go."""
    clock = Clock()
    rid = _recorded(tmp_path, store, clock)
    with Store.open(store.url) as other_store:
        first = RolloutController(store, clock=clock, owner="first")
        second = RolloutController(other_store, clock=clock, owner="second")
        first.tick()
        assert first.is_leader
        with store.write() as conn:  # undo what the leader did, to see the other do nothing
            conn.exec_driver_sql("UPDATE rollout_devices SET state = 'pending'")
        for _ in range(3):
            second.tick()
            assert not second.is_leader
        assert set(device_states(store, rid).values()) == {"pending"}
        first.close()
        second.tick()
        assert second.is_leader
        assert set(device_states(store, rid).values()) == {"offered"}
        first.tick()
        assert not first.is_leader
        second.close()


def test_dead_leader_is_replaced(tmp_path: Path, store: Store) -> None:
    """A leader that dies without letting go is replaced: its lease expires or its session ends."""
    clock = Clock()
    _recorded(tmp_path, store, clock)
    timings = Timings(lease_ttl=timedelta(milliseconds=300))
    with Store.open(store.url) as other_store:
        first = RolloutController(store, clock=clock, owner="first", timings=timings)
        second = RolloutController(other_store, clock=clock, owner="second", timings=timings)
        first.tick()
        assert first.is_leader
        second.tick()
        assert not second.is_leader
        # "Kill" the first: drop its connection (PostgreSQL) and stop renewing (SQLite).
        if first.lock._pg is not None:
            first.lock._pg.invalidate()
            first.lock._pg = None
        store.engine.dispose()
        deadline = time.monotonic() + 10
        while not second.is_leader and time.monotonic() < deadline:
            time.sleep(0.1)
            second.tick()
        assert second.is_leader
        second.close()
