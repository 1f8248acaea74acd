"""`engine bootstrap` over a real sshd, with a stand-in bootstrap script (JSON result)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.ssh import Endpoint, SshSession
from engine.ssh._runtime import remote_target
from tests.harness.sshd import Sshd, new_key

#: Records its arguments and what was uploaded beside it, then answers like the real script.
STAND_IN = """\
import json, os, sys
args = sys.argv[1:]
opt = dict(zip(args[::2], args[1::2]))
bundle = opt["--bundle-dir"]
if opt["--device"] == "fails":
    print(json.dumps({"ok": False, "error": "agent root not writable"})); sys.exit(1)
print("installing ...", file=sys.stderr)
print(json.dumps({"ok": True, "detail": "enrolled", "device": opt["--device"],
                  "code": opt["--code"], "bundle": sorted(os.listdir(bundle))}))
"""


def _repo(tmp: Path, sshd: Sshd, devices: dict[str, dict[str, object]]) -> Path:
    root = tmp / "fleet"
    (root / "inventory").mkdir(parents=True)
    (root / "releases").mkdir()
    ssh = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.client_key),
        "runtime_dir": str(tmp / "host" / "{device}"),
    }
    group = {"match": {"platform": "linux"}, "ssh": ssh}
    doc = {"devices": devices, "groups": {"linux": group}}
    (root / "inventory" / "fleet.yaml").write_text(yaml.safe_dump(doc))
    (root / ".engine").mkdir()
    (root / ".engine" / "enrollment.secret").write_text("fleet-secret\n")
    return root


def _bundle(root: Path, sshd: Sshd, known_hosts: Path) -> None:
    endpoint = Endpoint("127.0.0.1", sshd.port, sshd.user, sshd.client_key, known_hosts)
    with SshSession(endpoint) as s:
        name = remote_target(s)
    bundle = root / ".engine" / "runtime-bundles" / name
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({"format_version": 1, "files": []}))
    (bundle / "fleet_rollout-0.1.0-py3-none-any.whl").write_bytes(b"wheel")


def _bootstrap(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "bootstrap", "-C", str(root), *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.slow
def test_bootstrap_table_and_failures(sshd: Sshd, known_hosts: Path, tmp_path: Path) -> None:
    """Hosts are bootstrapped two at a time: the script and bundle arrive, the code is passed,
    the JSON result is read; an auth failure and a failing script each get their own clear
    line and row, and the exit status is 1."""
    stranger = tmp_path / "stranger"
    new_key(stranger)
    devices: dict[str, dict[str, object]] = {f"host-{i}": {"platform": "linux"} for i in range(3)}
    devices["fails"] = {"platform": "linux"}
    devices["locked"] = {"platform": "linux", "ssh": {"key_file": str(stranger)}}
    devices["win"] = {"platform": "windows"}
    root = _repo(tmp_path, sshd, devices)
    _bundle(root, sshd, known_hosts)
    script = tmp_path / "install.py"
    script.write_text(STAND_IN)
    done = _bootstrap(root, "--script", str(script), "--known-hosts", str(known_hosts),
                      "--forks", "2")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:-1]}
    assert sorted(rows) == ["fails", "host-0", "host-1", "host-2", "locked"]  # not windows
    for i in range(3):
        assert " ok " in rows[f"host-{i}"] and "enrolled" in rows[f"host-{i}"]
    assert "auth failed" in rows["locked"]
    assert "bootstrap failed: agent root not writable" in rows["fails"]
    assert done.stdout.splitlines()[-1] == "3 ok, 2 failed"
    err = done.stderr.splitlines()
    assert len(err) == 2 and any("authentication failed" in e for e in err)

    done = _bootstrap(root, "--script", str(script), "--known-hosts", str(known_hosts),
                      "--device", "host-1", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["hosts"]
    assert row["result"]["code"] == "fleet-secret"
    assert row["result"]["bundle"] == ["bundle.json", "fleet_rollout-0.1.0-py3-none-any.whl"]


def test_bootstrap_refuses_unknown_host(sshd: Sshd, tmp_path: Path) -> None:
    """Without --accept-new a host missing from known_hosts is refused and nothing is run;
    with it the key is recorded in the repo's .engine/known_hosts."""
    root = _repo(tmp_path, sshd, {"host-0": {"platform": "linux"}})
    script = tmp_path / "install.py"
    script.write_text(STAND_IN)
    done = _bootstrap(root, "--script", str(script))
    assert done.returncode == 1
    assert "host key unknown" in done.stdout and "refused" in done.stderr
    assert not (tmp_path / "host" / "host-0").exists()
    kh = root / ".engine" / "known_hosts"
    assert not kh.exists()
    done = _bootstrap(root, "--script", str(script), "--accept-new")
    assert sshd.host_public_key in kh.read_text()
    # the key is now known; what fails next is the missing bundle, said plainly
    assert "no runtime bundle" in done.stdout + done.stderr
