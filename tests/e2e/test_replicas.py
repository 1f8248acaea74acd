"""Two `engine serve` replicas on one PostgreSQL store: any device to any replica, and a
replica killed mid-rollout loses nothing while the other takes over the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import rollout_devices, rollouts
from tests.e2e.conftest import MakeFleet, fleet_group, specs
from tests.harness import ServerProcess, wait_until
from tests.harness.balancer import Balancer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEADS = "leads the rollout controller now"


def _rows(url: str, query: Any) -> list[Any]:
    with Store.open(url, migrate=False) as store, store.read() as conn:
        return list(conn.execute(query).all())


def _devices(url: str) -> list[Any]:
    return _rows(url, select(rollout_devices))


def test_replica_killed_mid_rollout_loses_nothing(
    make_fleet: MakeFleet, postgres_url: str, tmp_path: Path
) -> None:
    """Devices reach two replicas through a round-robin balancer; the leading replica is
    SIGKILLed once the rollout is under way; the other leads the controller from then on,
    and every device ends on 3.0.1 after exactly one attempt."""
    group = fleet_group("3.0.0", waves=[34, 100], max_parallel=2, soak="1s")
    fleet = make_fleet(specs(6), group, state=postgres_url)
    fleet.setup("3.0.0")  # starts replica A (fleet.server), which leads the controller
    a = fleet.server
    wait_until("replica A to lead", lambda: LEADS in a.log.read_text(), timeout=30)
    b = ServerProcess(
        fleet.repo,
        tmp_path / "server-b.log",
        state=postgres_url,
        env={"ENGINE_ADMIN_TOKEN": a.admin_token, "ENGINE_ENROLLMENT_SECRET": a.enrollment_secret},
    )
    b.admin_token = a.admin_token
    b.start()
    balancer = Balancer([("127.0.0.1", a.port), ("127.0.0.1", b.port)])
    balancer.start()
    try:
        key = fleet.repo.public_key()
        for d in fleet.devices.values():
            d.write_config(key, balancer.url, a.enrollment_secret)
        fleet.start()
        fleet.wait_reported("3.0.0")
        assert all(balancer.connections), balancer.connections  # both replicas served devices
        assert LEADS not in b.log.read_text()

        fleet.repo.set_release("3.0.1")
        env = {"ENGINE_STATE_URL": postgres_url}
        fleet.repo.engine("apply", "--yes", env=env)
        wait_until(
            "a device to succeed",
            lambda: any(r.state == "succeeded" for r in _devices(postgres_url)),
            timeout=120,
        )
        a.kill()  # SIGKILL: no shutdown, its buffered reports and its session are gone
        assert a.proc is not None and a.proc.returncode == -9

        def done() -> bool:
            (r,) = _rows(postgres_url, select(rollouts.c.state))
            return bool(r.state == "completed")

        def progress() -> str:
            (r,) = _rows(postgres_url, select(rollouts.c.state, rollouts.c.reason))
            states = sorted((d.device, d.state, d.attempts) for d in _devices(postgres_url))
            tail = b.log.read_text()[-1500:]
            return f"rollout {r.state} ({r.reason}); devices {states}; replica B log: {tail}"

        wait_until("the rollout to complete on replica B", done, timeout=240, progress=progress)
        assert LEADS in b.log.read_text()
        rows = _devices(postgres_url)
        assert len(rows) == 6 and {r.state for r in rows} == {"succeeded"}
        assert all(r.attempts == 1 for r in rows), [(r.device, r.attempts) for r in rows]
        for i, d in fleet.devices.items():
            assert d.installed() == "3.0.1", i
            assert [t for t in d.transactions() if t[0] == "3.0.1"] == [("3.0.1", "committed")]
    finally:
        balancer.stop()
        b.stop()
