"""Release requirements through a real `engine serve`: devices report their facts over HTTP,
`engine plan` blocks the ones that lack them, and a device whose runtime is too old waits in
its rollout until it reports a runtime that meets the requirement, then is offered the update.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.store import Store
from tests.harness import wait_until
from tests.server.conftest import ServerHandle, copy_fleet, running_server
from tests.server.helpers import bearer

pytestmark = pytest.mark.slow

INVENTORY = """\
devices:
  fresh-01: {platform: linux, site: lab}
  old-01: {platform: linux, site: lab}
  silent-01: {platform: linux, site: lab}
groups:
  fleet:
    match: {site: lab}
    agent: {release: "3.0.1"}
    rollout: {waves: [100], max_parallel: 5, soak: 0s, min_success_rate: 0.3}
"""
REQUIRES = """\
requires:
  runtime: ">=0.2.0"
  python: ">=3.11,<3.14"
  os: {linux: ">=5.10"}
  components: {openssl: ">=3.0"}
"""
FACTS: dict[str, Any] = {
    "python_version": "3.11.7",
    "os_version": "6.1.0-18-amd64",
    "components": {"openssl": "3.0.19", "glibc": "2.36"},
}


def _repo(tmp_path: Path) -> Path:
    repo = copy_fleet(tmp_path / "fleet")
    for path in (repo / "inventory").iterdir():
        path.unlink()
    (repo / "inventory" / "lab.yaml").write_text(INVENTORY)
    release = repo / "releases" / "3.0.1.yaml"
    release.write_text(release.read_text() + REQUIRES)
    return repo


def _engine(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args, "-C", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


class _Device:
    """One device talking HTTP to the server as a runtime would."""

    def __init__(self, server: ServerHandle, name: str, runtime: str, **facts: Any) -> None:
        self.server = server
        self.name = name
        self.token = server.enroll(name)
        self.body: dict[str, Any] = {
            "platform": "linux",
            "agent_version": "3.0.0",
            "known_good": "3.0.0",
            "runtime_version": runtime,
            "agent_running": True,
            **facts,
        }

    def checkin(self) -> dict[str, Any]:
        with httpx.Client(base_url=self.server.url, timeout=10) as c:
            r = c.post(
                f"/v1/devices/{self.name}/checkin", json=self.body, headers=bearer(self.token)
            )
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer


def _stored(url: str) -> dict[str, tuple[Any, ...]]:
    with Store.open(url, migrate=False) as store, store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT device, runtime_version, python_version, os_version, components FROM reports"
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _rollout_devices(url: str) -> dict[str, tuple[Any, ...]]:
    with Store.open(url, migrate=False) as store, store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT device, state, reason, requires_runtime FROM rollout_devices"
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_too_old_runtime_waits_in_the_rollout_until_it_reports_a_newer_one(
    tmp_path: Path, store_url: str
) -> None:
    """fresh-01 meets every requirement and is offered 3.0.1; old-01 (runtime 0.1.0) is
    blocked in the plan and waits in the rollout, through many controller ticks, with its
    reason in `engine status`; once it reports runtime 0.2.0 it is offered 3.0.1. silent-01
    (a runtime that reports no facts) is blocked and excluded, never offered."""
    repo = _repo(tmp_path)
    with running_server(repo, store_url) as server:
        fresh = _Device(server, "fresh-01", "0.2.0", **FACTS)
        old = _Device(server, "old-01", "0.1.0", **FACTS)
        silent = _Device(server, "silent-01", "0.2.0")
        # Facts are bounded: too many components, or a name outside the pattern, are refused.
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for bad, field in (
                ({"components": {f"c{i}": "1" for i in range(33)}}, "components"),
                ({"components": {"OpenSSL": "3.0"}}, "components.OpenSSL"),
                ({"python_version": "3" * 101}, "python_version"),
            ):
                r = c.post(
                    "/v1/devices/fresh-01/checkin",
                    json={**fresh.body, **bad},
                    headers=bearer(fresh.token),
                )
                assert r.status_code == 422 and field in r.text, r.text
        for d in (fresh, old, silent):
            assert d.checkin()["plan"] is None
        wait_until("reports stored", lambda: len(_stored(store_url)) == 3, timeout=30)
        stored = _stored(store_url)
        assert stored["fresh-01"][:3] == ("0.2.0", "3.11.7", "6.1.0-18-amd64")
        assert json.loads(stored["fresh-01"][3]) == FACTS["components"]
        assert stored["silent-01"] == ("0.2.0", None, None, None)

        plan = _engine(repo, "plan", "--state", store_url, "--verbose").stdout
        assert "release 3.0.1 needs runtime >=0.2.0, has 0.1.0; waits in the rollout" in plan
        assert "the runtime did not report its python version" in plan
        _engine(repo, "apply", "--yes", "--allow-unsigned", "--state", store_url)
        rows = _rollout_devices(store_url)
        assert rows["old-01"][0] == "pending" and rows["old-01"][2] == ">=0.2.0"
        assert rows["silent-01"][0] == "excluded"
        assert "did not report its python version" in rows["silent-01"][1]

        offers: dict[str, dict[str, Any]] = {}

        def offered(device: _Device) -> bool:
            answer = device.checkin()
            if answer["plan"] is not None:
                offers[device.name] = answer
            return answer["plan"] is not None

        wait_until("fresh-01 offered", lambda: offered(fresh), timeout=60, interval=0.3)
        assert offers["fresh-01"]["plan"]["desired"] == "3.0.1"
        # The tick that offered fresh-01 had a free slot for old-01 too (max_parallel 5) and
        # passed it over; so do the ticks after it (one a second).
        for _ in range(6):
            assert not offered(old)
            assert not offered(silent)
            time.sleep(0.5)
        status = _engine(repo, "status", "--state", store_url, "--rollout", "fleet@3.0.1")
        assert "old-01" in status.stdout and "pending" in status.stdout
        shown = json.loads(
            _engine(
                repo, "status", "--json", "--state", store_url, "--rollout", "fleet@3.0.1"
            ).stdout
        )
        reasons = {d["device"]: d["reason"] for d in shown["devices"]["devices"]}
        assert reasons["old-01"].startswith("release 3.0.1 needs runtime >=0.2.0, has 0.1.0;")
        assert _rollout_devices(store_url)["old-01"][0] == "pending"

        # Its runtime is updated (by a runtime release or by hand): it says so and is offered.
        old.body["runtime_version"] = "0.2.0"
        wait_until("old-01 offered", lambda: offered(old), timeout=60, interval=0.3)
        plan_for_old = offers["old-01"]["plan"]
        assert (plan_for_old["desired"], plan_for_old["action"]) == ("3.0.1", "update")
        state, reason, _ = _rollout_devices(store_url)["old-01"]
        assert state == "in_progress" and reason is None
        assert not offered(silent)
