"""Fixtures: fleets of real device runtimes against a real `engine serve` on 127.0.0.1.

Built from the test harness (``tests/harness``):
each device is a temp dir with the example agent 3.0.0 installed (in-place or
versioned layout), a device config naming the server, the enrollment secret
and the pinned signing key, and its own `agent-runtime converge` process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import events, rollout_devices, rollouts
from tests.harness import DeviceSpec, DeviceTimings, Fleet

MakeFleet = Callable[..., Fleet]


def fleet_group(release: str, **rollout: Any) -> dict[str, Any]:
    """One group over every demo-site device with the given rollout policy."""
    policy = {"waves": [10, 50, 100], "max_parallel": 3, "soak": "2s", "min_success_rate": 1.0,
              "max_failure_rate": 0.0}  # fmt: skip
    policy.update(rollout)
    return {"fleet": {"match": {"site": "demo"}, "agent": {"release": release}, "rollout": policy}}


def specs(count: int, prefix: str = "dev", **kw: Any) -> list[DeviceSpec]:
    """``count`` devices, platforms rotating over linux, windows, macos."""
    platforms = ("linux", "windows", "macos")
    return [DeviceSpec(f"{prefix}-{i:02d}", platforms[i % 3], **kw) for i in range(count)]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Build fleets under tmp_path (half the devices in the versioned layout); every runtime,
    agent and server is stopped afterwards."""
    made: list[Fleet] = []

    def factory(devices: list[DeviceSpec], groups: dict[str, Any], **kw: Any) -> Fleet:
        kw.setdefault("layout", lambda i: "versioned" if i % 2 else "in_place")
        kw.setdefault("timings", DeviceTimings())
        fleet = Fleet(tmp_path / f"fleet{len(made)}", devices, groups, **kw)
        made.append(fleet)
        return fleet

    yield factory
    for fleet in made:
        fleet.stop()


class StoreView:
    """Read the server's store directly (the server may be down)."""

    def __init__(self, fleet: Fleet) -> None:
        default = f"sqlite:///{fleet.repo.root / '.engine' / 'state.db'}"
        self.url = fleet.server.state or default

    def _rows(self, query: Any) -> list[Any]:
        with Store.open(self.url, migrate=False) as store, store.read() as conn:
            return list(conn.execute(query).all())

    def rollout(self, name: str) -> Any:
        """The newest rollout row named ``name`` (group@release)."""
        rows = self._rows(select(rollouts).where(rollouts.c.name == name).order_by(rollouts.c.id))
        assert rows, f"no rollout {name}"
        return rows[-1]

    def devices(self, rollout_id: int) -> list[Any]:
        """Rows of the rollout's devices."""
        return self._rows(select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id))

    def events(self, target: str | None = None) -> list[Any]:
        """Step events, optionally only those for ``target``."""
        q = select(events)
        if target is not None:
            q = q.where(events.c.target == target)
        return self._rows(q.order_by(events.c.id))


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda p: (p[0], p[1]))  # fmt: skip
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def seconds(text: str) -> timedelta:
    """``"2s"`` as a timedelta."""
    from fleetbase.duration import parse_duration

    return parse_duration(text)
