"""Maintenance windows (a server clock moved from outside), pins, and a late-enrolled device."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.waves import wave_fraction, wave_index
from tests.e2e.conftest import MakeFleet, StoreView
from tests.harness import DeviceSpec, wait_until

pytestmark = pytest.mark.slow

WAVES = [50.0, 100.0]


def test_window_pin_and_late_device(make_fleet: MakeFleet, tmp_path: Path) -> None:
    """Nothing is offered before the window opens on the server's clock; once it opens the
    group converges, the pinned device never moves, and a device whose runtime first starts
    after `engine apply` joins its stable wave and converges too."""
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=6)
    clock = tmp_path / "server-clock"
    clock.write_text("")  # the real time: about six hours before the window
    devices = [
        DeviceSpec("win-00", "linux"),
        DeviceSpec("win-01", "windows"),
        DeviceSpec("win-02", "linux", pin="3.0.0"),
        DeviceSpec("win-03", "macos"),
        DeviceSpec("late-04", "linux"),
    ]
    groups = {"windowed": {
        "match": {"site": "demo"}, "agent": {"release": "3.0.0"},
        "rollout": {"waves": WAVES, "max_parallel": 5, "soak": "1s", "min_success_rate": 1.0},
        "maintenance_window": {"cron": f"0 {start.hour} * * *", "duration": "1h",
                               "timezone": "UTC"},
    }}  # fmt: skip
    fleet = make_fleet(devices, groups, server_env={"ENGINE_TEST_CLOCK_FILE": str(clock)})
    fleet.setup("3.0.0")
    early = [d.id for d in devices if d.id != "late-04"]
    fleet.start(early)
    fleet.wait_reported("3.0.0", ids=early)
    view = StoreView(fleet)
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout = view.rollout("windowed@3.0.1")
    rows = {r.device: r for r in view.devices(rollout.id)}
    assert rows.get("win-02") is None or rows["win-02"].state == "excluded"  # pinned: not moved

    time.sleep(4)  # several check-ins of every device while the window is closed
    assert view.events() == []
    assert all(d.installed() == "3.0.0" for d in fleet.devices.values())
    assert {r.state for r in view.devices(rollout.id)} <= {"pending", "excluded"}

    fleet.start(["late-04"])  # enrolls after the rollout started
    fleet.wait_reported("3.0.0", ids=["late-04"])
    clock.write_text(f"+{(start - datetime.now(UTC)).total_seconds() + 300:.0f}")
    moving = ["win-00", "win-01", "win-03", "late-04"]
    wait_until("the window's devices to run 3.0.1",
               lambda: all(fleet.device(i).heartbeating("3.0.1") for i in moving),
               timeout=120)  # fmt: skip

    def judged() -> bool:
        states = {r.device: r.state for r in view.devices(rollout.id)}
        return all(states.get(i) == "succeeded" for i in moving)

    wait_until("the server to judge them succeeded", judged, timeout=30)
    rows = {r.device: r for r in view.devices(rollout.id)}
    assert rows["late-04"].wave == wave_index(wave_fraction("windowed", "late-04"), WAVES)
    assert all(r.offered_at >= start for i, r in rows.items() if i in moving)
    pinned = fleet.device("win-02")
    assert pinned.installed() == "3.0.0" and pinned.heartbeating("3.0.0")
    assert pinned.transactions() == []
    assert all(e.device != "win-02" for e in view.events())
