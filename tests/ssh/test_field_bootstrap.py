"""The field device taken over with `engine bootstrap` over a real sshd, end to end.

A device as the old snippet left it (agent 3.0.0 in place, running as a plain process,
no runtime) is reached through the test sshd; `engine bootstrap` issues its invite code,
uploads the installer `GET /install/linux` serves and the signed runtime bundle, and runs
it: the runtime is installed offline as a runtime home, enrolls with the code, adopts the
agent as 3.0.0 without restarting it. The supervisor command the installer names is run;
the server records the adoption; a runtime release moves the device to the new runtime
(agent pid unchanged); `engine apply` of 3.0.1 then reaches the device and commits.
(The same takeover through `GET /install/linux` run by hand:
tests/bootstrap/test_field_takeover.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from agent_runtime.services.supervised_service import supervised_argv
from engine.store import Store
from engine.store.schema import events, invites, reports
from tests.bootstrap.conftest import FieldDevice
from tests.bundles import RuntimeBundle
from tests.harness.procs import start_as_service, wait_until
from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess
from tests.harness.sshd import Sshd
from tests.harness.supervised import SUPERVISOR_SOURCE
from tests.runtime_releases import build_release_bundles

# Three venvs are built (the install, the runtime release's bundle and its install).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

DEVICE = "field-01"
GOOD = "0.2.0"


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

    def runtime_reported(self) -> str | None:
        """The runtime version of the device's last check-in (the server's reports)."""
        found = [r.runtime_version for r in self.rows(reports) if r.device == DEVICE]
        return found[0] if found else None

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


def _json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} while it is missing or being replaced)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stop(proc: subprocess.Popen[bytes], home: Path) -> None:
    """SIGTERM the supervisor (it stops its runtime); SIGKILL whatever of it is left."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    with contextlib.suppress(OSError, ValueError, KeyError):
        os.kill(int(json.loads((home / "child.pid").read_text())["pid"]), signal.SIGKILL)


def test_field_device_bootstrapped_over_ssh_supervised_then_self_updated(
    world: World, runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    """engine bootstrap installs the runtime offline from the bundle as a runtime home,
    enrolls with a fresh single-use invite, adopts the running 3.0.0 (same pid); the server
    shows the adoption; a second bootstrap skips the device. The test runs exactly the
    supervisor command the installer gave (no service manager: systemd is not PID 1 here);
    runtime release 0.2.0 then moves the device to the new runtime with the agent's pid
    unchanged, and engine apply of 3.0.1 is installed by that new runtime."""
    pid = world.device.start_agent()
    done = _bootstrap(world)
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["hosts"]
    result = row["result"]
    assert row["ok"] and result["ok"], row
    runtime = result["runtime"]
    base, home = runtime["version"], world.prefix
    assert runtime["home"] == str(home) and runtime["command"] == str(home / "bin/agent-runtime")
    assert row["detail"].endswith(f"changes; agent known 3.0.0; runtime {base} in {home}"), row
    assert result["adoption"]["status"] == "known" and result["adoption"]["version"] == "3.0.0"
    assert f"runtime {base} installed in {home / 'versions' / base}" in result["changed"]
    assert any(c.startswith(f"enrolled {DEVICE}") for c in result["changed"])

    # the runtime home, and the supervisor command the note names
    assert json.loads((home / "runtime.json").read_text()) == {"current": base, "trial": None}
    assert (home / "supervisor.py").read_bytes() == SUPERVISOR_SOURCE.read_bytes()
    assert not (home / "pyvenv.cfg").exists() and not (home / "lib").exists()
    config = home / "etc" / "config.yaml"
    argv = runtime["supervisor"]
    assert argv == supervised_argv(Path(argv[0]), home, config, 120.0)
    (note,) = [n for n in result["notes"] if "no OS service installed" in n]
    assert note.endswith(f": run {shlex.join(argv)}"), note

    # what ran on the host is what GET /install/linux serves, fed the verified bundle
    with urllib.request.urlopen(world.server.url + "/install/linux", timeout=10) as resp:
        served = resp.read()
    work = world.host / "bootstrap"
    assert (work / "install.py").read_bytes() == served
    assert not (home / "etc" / "enrollment.code").exists()  # used, then deleted
    ((invited, used),) = [(r.device, r.used_at) for r in world.rows(invites)]
    assert invited == DEVICE and used is not None

    # the agent was taken over as it runs: not restarted
    assert world.device.proc is not None and world.device.proc.poll() is None
    state = json.loads((home / "state" / "state.json").read_text())
    assert state["installed"] == "3.0.0" and state["adopted_from"] == "hash"
    assert json.loads((home / "state" / "agent.pid").read_text())["pid"] == pid

    # the OS service would start the supervisor; here (--service none) the test does
    cfg = yaml.safe_load(config.read_text())
    cfg.update({"converge": {"interval": "1s", "jitter": "0s"}, "health_timeout": "20s",
                "env": {"HEARTBEAT_INTERVAL": "0.5", "PYTHONDONTWRITEBYTECODE": "1"}})  # fmt: skip
    config.write_text(yaml.safe_dump(cfg))
    log = world.host / "runtime.log"
    supervisor = start_as_service(argv, log, world.device.base)
    try:
        wait_until("the device to report 3.0.0", lambda: world.reports("3.0.0"), timeout=90)
        assert world.runtime_reported() == base
        adoption = world.device_row()["adoption"]
        assert adoption["status"] == "known" and adoption["version"] == "3.0.0", adoption
        assert json.loads((home / "state" / "agent.pid").read_text())["pid"] == pid

        again = world.repo.engine("bootstrap", "--known-hosts", str(world.known_hosts))
        assert "no selected device has ssh settings and no runtime yet" in again.stdout

        # a runtime release: the device installs it beside its runtime and hands over
        bundles = build_release_bundles(tmp_path / "release", GOOD, runtime_bundle.key_file)
        world.repo.engine("runtime", "release", "--from", str(bundles), "--json")
        doc = yaml.safe_load(world.repo.inventory.read_text())
        doc["groups"]["fleet"]["runtime"] = {"release": GOOD}
        world.repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
        applied = world.repo.engine("apply", "--yes", "--wait", check=False, timeout=600)
        assert applied.returncode == 0, applied.stdout + applied.stderr + log.read_text()
        wait_until(
            "the supervisor to keep the new runtime",
            lambda: (
                _json(home / "runtime.json").get("current") == GOOD
                and _json(home / "outcome.json").get("result") == "confirmed"
            ),
            timeout=60,
        )
        wait_until("the device to report runtime " + GOOD,
                   lambda: world.runtime_reported() == GOOD, timeout=60)  # fmt: skip
        assert world.device.proc.poll() is None
        assert json.loads((home / "state" / "agent.pid").read_text())["pid"] == pid
        shown = subprocess.run([runtime["command"], "--version"], capture_output=True, text=True,
                               timeout=60, check=False)  # fmt: skip
        assert shown.stdout.split() == ["agent-runtime", GOOD], shown.stdout + shown.stderr

        # the new runtime converges the agent
        world.repo.set_release("3.0.1")
        applied = world.repo.engine("apply", "--yes", "--wait", check=False, timeout=300)
        assert applied.returncode == 0, applied.stdout + applied.stderr + log.read_text()
        wait_until("the device to report 3.0.1", lambda: world.reports("3.0.1"), timeout=90)
        state = json.loads((home / "state" / "state.json").read_text())
        assert state["installed"] == "3.0.1" and state["last_result"] == "committed"
        assert world.device_row()["adoption"]["version"] == "3.0.0"  # what it took over
        steps = {(e.target, e.step, e.status) for e in world.rows(events) if e.device == DEVICE}
        assert ("3.0.1", "commit", "ok") in steps, steps
    finally:
        _stop(supervisor, home)
