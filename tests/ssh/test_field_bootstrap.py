"""The field device taken over with `engine bootstrap` over a real sshd, end to end.

A device as the old snippet left it (agent 3.0.0 in place, running as a plain process,
no runtime) is reached through the test sshd; `engine bootstrap` issues its invite code,
uploads the installer `GET /install/linux` serves and the signed runtime bundle, and runs
it: the runtime is installed offline, enrolls with the code, adopts the agent as 3.0.0
without restarting it. The server records the adoption; `engine apply` of 3.0.1 then
reaches the device and commits. (The same takeover through `GET /install/linux` run by
hand: tests/bootstrap/test_field_takeover.py.)
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import events, invites
from tests.bootstrap.conftest import FieldDevice
from tests.bundles import RuntimeBundle
from tests.harness.procs import wait_until
from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess
from tests.harness.sshd import Sshd

pytestmark = pytest.mark.slow

DEVICE = "field-01"


@dataclass
class World:
    """The operator repo with its server, the field device, and where its runtime goes."""

    repo: OperatorRepo
    server: ServerProcess
    device: FieldDevice
    known_hosts: Path
    host: Path  # the runtime's directory on the host (bootstrap work dir under it)
    prefix: Path  # the runtime's venv, config and state

    def rows(self, table: Any) -> list[Any]:
        """Every row of ``table`` in the server's store."""
        url = f"sqlite:///{self.repo.root / '.engine' / 'state.db'}"
        with Store.open(url, migrate=False) as store, store.read() as conn:
            return list(conn.execute(select(table)))

    def reports(self, version: str) -> bool:
        """True once the device's last check-in said ``version`` runs."""
        return self.device_row().get("agent_version") == version

    def device_row(self) -> dict[str, Any]:
        """The device as GET /v1/admin/devices shows it."""
        rows = self.server.admin("GET", "/v1/admin/devices").json()
        rows = rows.get("devices", rows) if isinstance(rows, dict) else rows
        return next((r for r in rows if r["device"] == DEVICE), {})


@pytest.fixture
def world(sshd: Sshd, tmp_path: Path, runtime_bundle: RuntimeBundle) -> Iterator[World]:
    """A running `engine serve` whose inventory reaches the field device over SSH."""
    device = FieldDevice(tmp_path / "field")
    host = tmp_path / "host"
    repo = OperatorRepo(tmp_path / "fleet")
    known_hosts = sshd.known_hosts(tmp_path / "known_hosts")
    ssh = {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
           "key_file": str(sshd.client_key), "agent_root": str(device.agent_root),
           "runtime_dir": str(host)}  # fmt: skip
    group = {"fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.0"}, "ssh": ssh,
                       "rollout": {"waves": [100], "soak": "1s", "min_success_rate": 1.0,
                                   "max_failure_rate": 0.0}}}  # fmt: skip
    repo.create([DeviceSpec(DEVICE)], group)
    server = ServerProcess(repo, tmp_path / "server.log")
    (repo.root / "keys" / "bundle-signing.pub").write_text(runtime_bundle.public_key + "\n")
    settings = yaml.safe_load((repo.root / "engine.yaml").read_text())
    settings.update(trusted_keys=["keys/release-signing.pub", "keys/bundle-signing.pub"],
                    runtime_bundles=str(runtime_bundle.root), server_url=server.url)  # fmt: skip
    (repo.root / "engine.yaml").write_text(yaml.safe_dump(settings))
    server.start()
    try:
        yield World(repo, server, device, known_hosts, host, host / "runtime")
    finally:
        device.stop()
        server.stop()


def _bootstrap(world: World) -> subprocess.CompletedProcess[str]:
    return world.repo.engine(
        "bootstrap", "--known-hosts", str(world.known_hosts), "--service", "none",
        "--agent-service", "process", "--prefix", str(world.prefix), "--json",
        check=False, timeout=900,
    )  # fmt: skip


def test_field_device_bootstrapped_over_ssh_adopted_then_updated(world: World) -> None:
    """engine bootstrap installs the runtime offline from the bundle, enrolls with a fresh
    single-use invite, adopts the running 3.0.0 (same pid); the server shows the adoption;
    a second bootstrap skips the device; engine apply of 3.0.1 reaches it and commits."""
    pid = world.device.start_agent()
    done = _bootstrap(world)
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["hosts"]
    result = row["result"]
    assert row["ok"] and result["ok"], row
    assert row["detail"].endswith("changes; agent known 3.0.0"), row["detail"]
    assert result["adoption"]["status"] == "known" and result["adoption"]["version"] == "3.0.0"
    assert any(c.startswith("runtime ") and "installed" in c for c in result["changed"])
    assert any(c.startswith(f"enrolled {DEVICE}") for c in result["changed"])

    # what ran on the host is what GET /install/linux serves, fed the verified bundle
    with urllib.request.urlopen(world.server.url + "/install/linux", timeout=10) as resp:
        served = resp.read()
    work = world.host / "bootstrap"
    assert (work / "install.py").read_bytes() == served
    assert not (world.prefix / "etc" / "enrollment.code").exists()  # used, then deleted
    ((invited, used),) = [(r.device, r.used_at) for r in world.rows(invites)]
    assert invited == DEVICE and used is not None

    # the agent was taken over as it runs: not restarted
    assert world.device.proc is not None and world.device.proc.poll() is None
    state = json.loads((world.prefix / "state" / "state.json").read_text())
    assert state["installed"] == "3.0.0" and state["adopted_from"] == "hash"
    assert json.loads((world.prefix / "state" / "agent.pid").read_text())["pid"] == pid

    # the OS service would start the runtime; here (--service none) the test starts it
    config = world.prefix / "etc" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg.update({"converge": {"interval": "1s", "jitter": "0s"}, "health_timeout": "20s",
                "env": {"HEARTBEAT_INTERVAL": "0.5", "PYTHONDONTWRITEBYTECODE": "1"}})  # fmt: skip
    config.write_text(yaml.safe_dump(cfg))
    log = world.host / "runtime.log"
    with open(log, "ab") as out:
        runtime = subprocess.Popen(
            [str(world.prefix / "bin" / "agent-runtime"), "converge", "--config", str(config)],
            cwd=world.device.base, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until("the device to report 3.0.0", lambda: world.reports("3.0.0"), timeout=90)
        adoption = world.device_row()["adoption"]
        assert adoption["status"] == "known" and adoption["version"] == "3.0.0", adoption
        assert json.loads((world.prefix / "state" / "agent.pid").read_text())["pid"] == pid
        assert world.device.proc.poll() is None

        again = world.repo.engine("bootstrap", "--known-hosts", str(world.known_hosts))
        assert "no selected device has ssh settings and no runtime yet" in again.stdout

        world.repo.set_release("3.0.1")
        applied = world.repo.engine("apply", "--yes", "--wait", check=False, timeout=300)
        assert applied.returncode == 0, applied.stdout + applied.stderr + log.read_text()
        wait_until("the device to report 3.0.1", lambda: world.reports("3.0.1"), timeout=90)
        state = json.loads((world.prefix / "state" / "state.json").read_text())
        assert state["installed"] == "3.0.1" and state["last_result"] == "committed"
        assert world.device_row()["adoption"]["version"] == "3.0.0"  # what it took over
        steps = {(e.target, e.step, e.status) for e in world.rows(events) if e.device == DEVICE}
        assert ("3.0.1", "commit", "ok") in steps, steps
    finally:
        runtime.terminate()
        runtime.wait(30)
