"""A field device taken over through `GET /install/linux`, end to end with real parts.

A real `engine serve` on 127.0.0.1 serving a signed runtime bundle; a device as the old
snippet left it (agent 3.0.0 in place, running as a plain process, no runtime); the served
installer run by hand with `--service none --prefix TMP` fetches and verifies the bundle,
installs the runtime with pip --no-index as a runtime home (versions/<V>, runtime.json,
the supervisor), enrolls with an invite code, adopts the agent as 3.0.0 without restarting
it; a second run changes nothing; `<prefix>/bin/agent-runtime converge` then takes 3.0.1
after `engine apply`; `--uninstall` leaves the agent's files byte-identical. A device
installed the old way (a plain venv at the prefix) is converted in place by running the
installer again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import reports
from tests.bootstrap.conftest import FieldDevice, legacy_install
from tests.bundles import RuntimeBundle
from tests.harness.procs import start_as_service, wait_until
from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess
from tests.harness.supervised import SUPERVISOR_SOURCE

pytestmark = pytest.mark.slow

DEVICE = "field-01"


@pytest.fixture
def server(tmp_path: Path, runtime_bundle: RuntimeBundle) -> Iterator[ServerProcess]:
    """`engine serve` for an operator repo whose engine.yaml pins its release signing key
    and the bundle's signing key, and serves the runtime bundle."""
    repo = OperatorRepo(tmp_path / "fleet")
    group = {"fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.0"},
                       "rollout": {"waves": [100], "soak": "1s", "min_success_rate": 1.0,
                                   "max_failure_rate": 0.0}}}  # fmt: skip
    repo.create([DeviceSpec(DEVICE)], group)
    settings = yaml.safe_load((repo.root / "engine.yaml").read_text())
    (repo.root / "keys" / "bundle-signing.pub").write_text(runtime_bundle.public_key + "\n")
    settings["trusted_keys"] = ["keys/release-signing.pub", "keys/bundle-signing.pub"]
    settings["runtime_bundles"] = str(runtime_bundle.root)
    (repo.root / "engine.yaml").write_text(yaml.safe_dump(settings))
    proc = ServerProcess(repo, tmp_path / "server.log")
    proc.start()
    yield proc
    proc.stop()


def installer(server: ServerProcess) -> str:
    """The script `GET /install/linux` serves."""
    with urllib.request.urlopen(server.url + "/install/linux", timeout=10) as resp:
        return str(resp.read().decode())


def run_installer(script: str, *args: str) -> tuple[int, dict[str, Any]]:
    """`python3 - ARGS --json` with the script on stdin, as `curl ... | python3 -` runs it."""
    proc = subprocess.run(
        [sys.executable, "-", *args, "--json"], input=script, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_field_device_is_taken_over_updated_and_uninstalled(
    server: ServerProcess, field_device: FieldDevice, tmp_path: Path
) -> None:
    """Install from the served bundle + invite + adopt 3.0.0 (same agent pid), idempotent
    second run, 3.0.1 through `engine apply`, then --uninstall leaves the agent files alone."""
    repo = server.repo
    pid = field_device.start_agent()
    invite = json.loads(repo.engine("devices", "invite", DEVICE, "--json").stdout)
    prefix = tmp_path / "runtime"
    script = installer(server)
    assert f"SERVER_URL = {server.url!r}" in script and repo.public_key() in script
    args = ["--device", DEVICE, "--service", "none", "--agent-service", "process",
            "--prefix", str(prefix), "--agent-root", str(field_device.agent_root)]  # fmt: skip

    code, result = run_installer(script, *args, "--code", invite["code"])
    assert code == 0 and result["ok"], result
    assert result["adoption"]["status"] == "known" and result["adoption"]["version"] == "3.0.0"
    assert any("no OS service installed" in n for n in result["notes"])
    config = prefix / "etc" / "config.yaml"
    version = result["runtime"]["version"]
    assert json.loads((prefix / "runtime.json").read_text()) == {"current": version, "trial": None}
    assert (prefix / "versions" / version / "bin" / "agent-runtime").is_file()
    assert (prefix / "supervisor.py").read_bytes() == SUPERVISOR_SOURCE.read_bytes()
    assert not (prefix / "pyvenv.cfg").exists()
    assert (prefix / "etc" / "token").is_file()
    assert not (prefix / "etc" / "enrollment.code").exists()  # deleted once used
    assert field_device.proc is not None and field_device.proc.poll() is None
    state = json.loads((prefix / "state" / "state.json").read_text())
    assert state["installed"] == "3.0.0" and state["adopted_from"] == "hash"
    assert json.loads((prefix / "state" / "agent.pid").read_text())["pid"] == pid

    code, again = run_installer(script, *args, "--code", invite["code"])
    assert code == 0 and again["changed"] == [], again

    # The reused invite code is refused by the server itself.
    body = {"device": DEVICE, "platform": "linux", "invite_code": invite["code"]}
    req = urllib.request.Request(server.url + "/v1/enroll", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403

    cfg = yaml.safe_load(config.read_text())
    cfg.update({"converge": {"interval": "1s", "jitter": "0s"}, "health_timeout": "20s",
                "env": {"HEARTBEAT_INTERVAL": "0.5", "PYTHONDONTWRITEBYTECODE": "1"}})  # fmt: skip
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "runtime.log"
    with open(log, "ab") as out:
        runtime = subprocess.Popen(
            [str(prefix / "bin" / "agent-runtime"), "converge", "--config", str(config)],
            cwd=field_device.base, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def reported(version: str) -> bool:
            rows = server.admin("GET", "/v1/admin/devices").json()
            rows = rows.get("devices", rows) if isinstance(rows, dict) else rows
            return any(r["device"] == DEVICE and r["agent_version"] == version for r in rows)

        wait_until("the device to report 3.0.0", lambda: reported("3.0.0"), timeout=60)
        assert json.loads((prefix / "state" / "agent.pid").read_text())["pid"] == pid
        repo.set_release("3.0.1")
        applied = repo.engine("apply", "--yes", "--wait", check=False, timeout=180)
        assert applied.returncode == 0, applied.stdout + applied.stderr + log.read_text()
        wait_until("the device to report 3.0.1", lambda: reported("3.0.1"), timeout=60)
        assert json.loads((prefix / "state" / "state.json").read_text())["installed"] == "3.0.1"
    finally:
        runtime.terminate()
        runtime.wait(30)

    before = field_device.files()
    code, removed = run_installer(script, "--device", DEVICE, "--service", "none",
                                  "--prefix", str(prefix), "--uninstall")  # fmt: skip
    assert code == 0 and removed["ok"], removed
    assert not prefix.exists()
    assert field_device.files() == before


def _report(repo: OperatorRepo) -> dict[str, Any]:
    """The device's last check-in report in the server's store ({} before the first)."""
    url = f"sqlite:///{repo.root / '.engine' / 'state.db'}"
    with Store.open(url, migrate=False) as store, store.read() as conn:
        row = conn.execute(select(reports).where(reports.c.device == DEVICE)).first()
    return dict(row._mapping) if row is not None else {}


def test_an_install_from_before_self_update_is_converted_in_place(
    server: ServerProcess,
    field_device: FieldDevice,
    runtime_bundle: RuntimeBundle,
    tmp_path: Path,
) -> None:
    """A device installed the old way (a plain venv at the prefix, its runtime running) runs
    the served installer again: interrupted midway (after the new version is built) it
    leaves the old runtime working; run again it builds the runtime home, removes the old
    venv's files, keeps config, token and state, and the supervisor it names runs the
    runtime; the agent's pid never changes. A third run changes nothing."""
    repo = server.repo
    pid = field_device.start_agent()
    invite = json.loads(repo.engine("devices", "invite", DEVICE, "--json").stdout)
    prefix = tmp_path / "runtime"
    script = installer(server)
    args = ["--device", DEVICE, "--service", "none", "--agent-service", "process",
            "--prefix", str(prefix), "--agent-root", str(field_device.agent_root)]  # fmt: skip
    config = legacy_install(script, runtime_bundle.directory,
                            [*args, "--server", server.url, "--code", invite["code"]])  # fmt: skip
    assert (prefix / "pyvenv.cfg").is_file()
    token = (prefix / "etc" / "token").read_bytes()
    log = tmp_path / "runtime.log"
    argv = [str(prefix / "bin" / "agent-runtime"), "converge", "--config", str(config)]
    old = start_as_service(argv, log, field_device.base)
    try:
        base = json.loads((runtime_bundle.directory / "bundle.json").read_text())
        version = base["runtime_version"]
        wait_until("the old runtime to check in",
                   lambda: _report(repo).get("runtime_version") == version, timeout=60)  # fmt: skip

        # interrupted midway: the supervisor cannot be written (a directory is in its way)
        (prefix / "supervisor.py").mkdir()
        code, failed = run_installer(script, *args)
        assert code == 1 and not failed["ok"], failed
        assert (prefix / "versions" / version / "bin" / "agent-runtime").exists()
        assert (prefix / "pyvenv.cfg").is_file() and old.poll() is None
        shown = subprocess.run([str(prefix / "bin" / "agent-runtime"), "--version"],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert shown.stdout.split() == ["agent-runtime", version], shown.stderr
        (prefix / "supervisor.py").rmdir()

        code, result = run_installer(script, *args)
        assert code == 0 and result["ok"], result
        assert not any(c.startswith("runtime ") for c in result["changed"])  # built before
        assert any("old runtime venv's files removed" in c for c in result["changed"])
        assert sorted(p.name for p in prefix.iterdir()) == [
            "bin", "etc", "runtime.json", "state", "supervisor.py", "versions"]  # fmt: skip
        assert [p.name for p in (prefix / "bin").iterdir()] == ["agent-runtime"]
        assert (prefix / "etc" / "token").read_bytes() == token
        argv = result["runtime"]["supervisor"]
        (note,) = [n for n in result["notes"] if "no OS service installed" in n]
        assert f": run {shlex.join(argv)} (stop the old runtime, " in note, note

        # as the note says: the old runtime stops, the supervisor runs the new one
        old.terminate()
        old.wait(30)
        moment = _report(repo)["last_seen"]
        old = start_as_service(argv, log, field_device.base)
        wait_until("the supervised runtime to check in",
                   lambda: _report(repo)["last_seen"] > moment, timeout=90)  # fmt: skip
        assert json.loads((prefix / "child.pid").read_text())["version"] == version
        assert field_device.proc is not None and field_device.proc.poll() is None
        assert json.loads((prefix / "state" / "agent.pid").read_text())["pid"] == pid
        state = json.loads((prefix / "state" / "state.json").read_text())
        assert state["installed"] == "3.0.0"
        status = subprocess.run([result["runtime"]["command"], "status", "--json", "--config",
                                 str(config)], capture_output=True, text=True, timeout=60,
                                check=False)  # fmt: skip
        assert status.returncode == 0 and json.loads(status.stdout)["installed"] == "3.0.0"

        code, again = run_installer(script, *args)
        assert code == 0 and again["changed"] == [], again
    finally:
        old.terminate()
        old.wait(30)
    before = field_device.files()
    code, removed = run_installer(script, "--device", DEVICE, "--service", "none",
                                  "--prefix", str(prefix), "--uninstall")  # fmt: skip
    assert code == 0 and removed["ok"] and not prefix.exists(), removed
    assert field_device.files() == before
