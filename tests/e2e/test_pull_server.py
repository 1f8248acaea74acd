"""Pull mode against the real server: server down leaves agents alone; the server health kind."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial

import pytest
import yaml

from tests.e2e.conftest import MakeFleet, fleet_group, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow


def test_server_down_leaves_agents_running_and_runtimes_come_back(make_fleet: MakeFleet) -> None:
    """With the server killed the agents keep their pids and heartbeat; after a restart every
    runtime checks in again on its own."""
    fleet = make_fleet(specs(3), fleet_group("3.0.0"))
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    pids = {i: d.agent_pid() for i, d in fleet.devices.items()}
    snapshot = {i: sorted(p.name for p in d.agent_root.rglob("*.py")) for i, d in
                fleet.devices.items()}  # fmt: skip
    fleet.server.kill()
    time.sleep(3)
    for i, d in fleet.devices.items():
        assert d.running() and d.agent_pid() == pids[i] is not None
        assert d.heartbeating("3.0.0")
        assert sorted(p.name for p in d.agent_root.rglob("*.py")) == snapshot[i]
        assert "server unavailable" in d.log_text()
    restarted = datetime.now(UTC)
    fleet.server.start()

    def checked_in_again() -> bool:
        rows = fleet.server.admin("GET", "/v1/admin/devices").json()
        return (
            all(
                r["last_checkin"] is not None
                and datetime.fromisoformat(r["last_checkin"]) > restarted
                for r in rows
            )
            and len(rows) == 3
        )

    wait_until("every runtime to check in after the restart", checked_in_again, timeout=30)
    assert all(d.agent_pid() == pids[i] for i, d in fleet.devices.items())


def test_server_health_check_confirms_through_the_servers_heartbeat_record(
    make_fleet: MakeFleet,
) -> None:
    """A release whose health check is `server` commits once the server has recorded the new
    version's heartbeat (forwarded by the runtime from the agent's heartbeat file)."""
    fleet = make_fleet(specs(2), fleet_group("3.0.0", waves=[100]))
    fleet.setup("3.0.0")
    manifest = fleet.repo.root / "releases" / "3.0.1.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["health_check"] = {"kind": "server", "timeout": "20s", "max_age": "10s"}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    from engine.cli import main as engine_main

    assert engine_main(["release", "sign", str(manifest), "--key", str(fleet.repo.key)]) == 0
    fleet.start()
    fleet.wait_reported("3.0.0")
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rows = fleet.server.admin("GET", "/v1/admin/devices").json()
    assert {r["heartbeat_version"] for r in rows} == {"3.0.1"}
    for d in fleet.devices.values():
        wait_until(f"{d.id} heartbeating 3.0.1", partial(d.heartbeating, "3.0.1"), timeout=20)
        confirm = [line for line in d.log_text().splitlines() if line.strip().startswith("CONFIRM")]
        assert confirm and "server recorded a heartbeat of 3.0.1" in confirm[-1], confirm
