"""Rollouts with NATS on: nudged devices take each wave at once; the nats health check kind."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, specs
from tests.harness import Fleet, RuntimeDevice, wait_until
from tests.nats.conftest import Bus

pytestmark = pytest.mark.slow


def _use_bus(fleet: Fleet, bus: Bus, *, heartbeat_file: Path | None = None) -> None:
    """Give every device config the bus (nudges, the nats health check) and make its agent
    heartbeat on the bus; with ``heartbeat_file`` the agent's file goes where the runtime
    does not look, so the bus is its only heartbeat."""
    for d in fleet.devices.values():
        cfg: dict[str, Any] = yaml.safe_load(d.config_path.read_text())
        cfg["server"]["nats"] = bus.device_settings()
        cfg["env"].update(
            {
                "NATS_URL": bus.url,
                "NATS_HEARTBEAT_SUBJECT": bus.heartbeat_subject.replace("{device}", d.id),
                "AGENT_DEVICE_ID": d.id,
            }
        )
        if heartbeat_file is not None:
            cfg["env"]["WEGWEISER_HEARTBEAT_FILE"] = str(heartbeat_file / f"{d.id}.json")
        d.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _said(device: RuntimeDevice, text: str) -> bool:
    return text in device.log_text()


def _on(device: RuntimeDevice, version: str) -> bool:
    return device.installed() == version


def _nats_health(fleet: Fleet, *versions: str) -> None:
    """Re-sign ``versions`` with the ``nats`` health check kind."""
    from engine.cli import main as engine_main

    for v in versions:
        manifest = fleet.repo.root / "releases" / f"{v}.yaml"
        doc = yaml.safe_load(manifest.read_text())
        doc["health_check"] = {"kind": "nats", "timeout": "15s", "max_age": "10s"}
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert engine_main(["release", "sign", str(manifest), "--key", str(fleet.repo.key)]) == 0


def test_nudges_bring_each_wave_in_although_devices_poll_every_ten_minutes(
    make_fleet: MakeFleet, bus: Bus
) -> None:
    """With a 10-minute poll interval, a two-wave rollout still completes in well under a
    poll: the controller nudges each device it offers the release over NATS and the device
    checks in at once (its log says so)."""
    fleet = make_fleet(
        specs(4),
        fleet_group("3.0.0", waves=[50, 100], max_parallel=4, soak="1s"),
        poll_interval="10m",
        engine_settings=bus.engine_settings(),
    )
    fleet.setup("3.0.0")
    _use_bus(fleet, bus)
    fleet.start()
    fleet.wait_reported("3.0.0")
    for d in fleet.devices.values():
        wait_until(f"{d.id} to listen on NATS", partial(_said, d, "NATS: listening"), timeout=30)
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=240)
    assert applied.returncode == 0, applied.stdout + applied.stderr + fleet.server.tail()
    view = StoreView(fleet)
    rows = view.devices(view.rollout("fleet@3.0.1").id)
    assert {r.state for r in rows} == {"succeeded"} and {r.wave for r in rows} == {0, 1}
    for d in fleet.devices.values():
        assert "nudged over NATS: checking in now" in d.log_text(), d.log_text()[-2000:]
        assert d.installed() == "3.0.1"


def test_nats_health_check_confirms_on_bus_heartbeats_and_a_silent_release_rolls_back(
    make_fleet: MakeFleet, bus: Bus, tmp_path: Path
) -> None:
    """Agents whose only heartbeat is on the bus: 3.0.1 (nats health check) commits, its
    heartbeats recorded by the engine from NATS; 3.0.3, which never heartbeats, fails the
    check and the devices roll back to 3.0.1."""
    fleet = make_fleet(
        specs(2), fleet_group("3.0.0", waves=[100]), engine_settings=bus.engine_settings()
    )
    fleet.setup("3.0.0")
    _nats_health(fleet, "3.0.1", "3.0.3")
    elsewhere = tmp_path / "beats-nobody-reads"
    elsewhere.mkdir()
    _use_bus(fleet, bus, heartbeat_file=elsewhere)
    fleet.start()
    fleet.wait_reported("3.0.0")

    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=180)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for d in fleet.devices.values():
        subject = bus.heartbeat_subject.replace("{device}", d.id)
        confirm = [x for x in d.log_text().splitlines() if x.strip().startswith("CONFIRM")]
        assert confirm and f"heartbeat from 3.0.1 on {subject}" in confirm[-1], confirm
    wait_until(
        "the engine to record the bus heartbeats of 3.0.1",
        lambda: {r["heartbeat_version"] for r in fleet.server.admin("GET", "/v1/admin/devices")
                 .json()} == {"3.0.1"},
        timeout=30,
    )  # fmt: skip

    fleet.repo.set_release("3.0.3")
    failed = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=180)
    assert failed.returncode != 0, failed.stdout + failed.stderr
    for d in fleet.devices.values():
        wait_until(f"{d.id} back on 3.0.1", partial(_on, d, "3.0.1"), timeout=60)
    logs = "\n".join(d.log_text() for d in fleet.devices.values())
    assert "says 3.0.1" in logs or "no heartbeat on" in logs, logs[-3000:]
