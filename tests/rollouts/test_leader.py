"""Only one controller acts on a store: PostgreSQL advisory lock, SQLite lease."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from engine.rollouts import RolloutController, Timings
from engine.rollouts.errors import LeaseLostError
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


def _take_over(stale: RolloutController, other: RolloutController, store: Store) -> None:
    """End ``stale``'s leadership as a pause would, and let ``other`` take over."""
    pg = stale.lock._pg
    if pg is not None:
        # A paused leader's session ends (network, idle timeouts): its lock goes with it.
        driver: Any = pg.connection.driver_connection
        pid = driver.info.backend_pid
        with Store.open(store.url) as admin, admin.write() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 30
    while not other.is_leader and time.monotonic() < deadline:
        time.sleep(0.1)  # the SQLite lease expires on the wall clock
        other.tick()
    assert other.is_leader


def test_stale_leader_cannot_write(tmp_path: Path, store: Store) -> None:
    """A leader that loses its lease mid-tick (paused past it) writes nothing: fenced."""
    clock = Clock()
    rid = _recorded(tmp_path, store, clock)
    timings = Timings(lease_ttl=timedelta(milliseconds=300))
    with Store.open(store.url) as other_store:
        second = RolloutController(other_store, clock=clock, owner="second", timings=timings)
        paused: list[bool] = []

        def slow_clock() -> datetime:
            # Called by the tick right after it acquired the lock: the "pause".
            if not paused:
                paused.append(True)
                _take_over(first, second, store)
                with other_store.write() as conn:  # undo the new leader's offers
                    conn.exec_driver_sql("UPDATE rollout_devices SET state = 'pending'")
            return clock.now

        first = RolloutController(store, clock=slow_clock, owner="first", timings=timings)
        first.tick()
        assert paused and not first.is_leader
        assert set(device_states(store, rid).values()) == {"pending"}
        with pytest.raises(LeaseLostError), first.lock.write():
            pass
        second.tick()
        assert set(device_states(store, rid).values()) == {"offered"}
        second.close()
        first.close()


def test_lease_generation_grows_with_each_leader(tmp_path: Path) -> None:
    """Each new holder of the SQLite lease gets the next generation (the fencing token)."""
    sqlite_store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    timings = Timings(lease_ttl=timedelta(milliseconds=300))
    first = RolloutController(sqlite_store, owner="first", timings=timings)
    second = RolloutController(sqlite_store, owner="second", timings=timings)
    first.tick()
    assert first.lock.generation == 1
    _take_over(first, second, sqlite_store)
    assert second.lock.generation == 2
    second.close()
    first.tick()
    assert first.lock.generation == 3 and first.is_leader
    first.close()
    sqlite_store.close()
