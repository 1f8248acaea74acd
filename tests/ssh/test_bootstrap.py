"""`engine bootstrap` over a real sshd: the per-host table and failures with a stand-in
installer (``--script``, JSON result), invite codes issued per device, the runtime bundle
checked before anything is sent, unknown host keys; the real installer is in
test_field_bootstrap.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from engine.server.credentials import hash_token
from engine.store import Store
from engine.store.schema import invites
from tests.bundles import RuntimeBundle
from tests.harness.sshd import Sshd, new_key

#: Records its arguments and what was uploaded beside it, then answers like the real script.
STAND_IN = """\
import json, os, sys
args = [a for a in sys.argv[1:] if a != "--json"]
opt = dict(zip(args[::2], args[1::2]))
bundle = opt["--bundle-dir"]
if opt["--device"] == "fails":
    print(json.dumps({"ok": False, "error": "agent root not writable"})); sys.exit(1)
print("installing ...", file=sys.stderr)
code = open(opt["--code-file"]).read().strip()
os.unlink(opt["--code-file"])
print(json.dumps({"ok": True, "detail": "enrolled", "device": opt["--device"],
                  "code": code, "code_on_command_line": "--code" in sys.argv,
                  "server": opt["--server"], "prefix": opt.get("--prefix"),
                  "bundle": sorted(os.listdir(bundle))}))
"""
SERVER = "http://127.0.0.1:9"


def _repo(
    tmp: Path, sshd: Sshd, devices: dict[str, dict[str, object]], bundles: RuntimeBundle
) -> Path:
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
    (root / "keys").mkdir()
    (root / "keys" / "bundle.pub").write_text(bundles.public_key + "\n")
    settings = {"server_url": SERVER, "trusted_keys": ["keys/bundle.pub"],
                "runtime_bundles": str(bundles.root)}  # fmt: skip
    (root / "engine.yaml").write_text(yaml.safe_dump(settings))
    return root


def _codes(root: Path) -> dict[str, tuple[str, object]]:
    """Each device's invite: (sha256 of its code, when it was used)."""
    url = f"sqlite:///{root / '.engine' / 'state.db'}"
    with Store.open(url, migrate=False) as store, store.read() as conn:
        return {r.device: (r.code_hash, r.used_at) for r in conn.execute(select(invites))}


def _bootstrap(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "bootstrap", "-C", str(root), *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.slow
def test_bootstrap_table_and_failures(
    sshd: Sshd, known_hosts: Path, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """Hosts are bootstrapped two at a time: the script and bundle arrive, each device's own
    single-use invite code and the server URL are passed, the JSON result is read; an auth
    failure and a failing script each get their own clear line and row, exit status 1."""
    stranger = tmp_path / "stranger"
    new_key(stranger)
    devices: dict[str, dict[str, object]] = {f"host-{i}": {"platform": "linux"} for i in range(3)}
    devices["fails"] = {"platform": "linux"}
    devices["locked"] = {"platform": "linux", "ssh": {"key_file": str(stranger)}}
    devices["win"] = {"platform": "windows"}
    root = _repo(tmp_path, sshd, devices, runtime_bundle)
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

    assert set(_codes(root)) == {"fails", "host-0", "host-1", "host-2", "locked"}

    done = _bootstrap(root, "--script", str(script), "--known-hosts", str(known_hosts),
                      "--device", "host-1", "--prefix", "/opt/rt-{device}", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["hosts"]
    code = row["result"]["code"]
    assert code != "fleet-secret" and _codes(root)["host-1"] == (hash_token(code), None)
    # the code reached the script in a file it deleted, never on its command line (ps)
    assert row["result"]["code_on_command_line"] is False
    assert not list((tmp_path / "host" / "host-1").rglob("invite.code"))
    assert row["result"]["server"] == SERVER and row["result"]["prefix"] == "/opt/rt-host-1"
    assert row["result"]["bundle"] == sorted(p.name for p in runtime_bundle.directory.iterdir())


@pytest.mark.slow
def test_tampered_bundle_is_refused_before_anything_is_sent(
    sshd: Sshd, known_hosts: Path, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """A wheel with one flipped byte fails the bundle check on the operator's machine:
    the host's row says so and nothing reaches the host."""
    copy = runtime_bundle.copy_to(tmp_path / "bundles")
    wheel = sorted(copy.glob("fleet_rollout-*.whl"))[0]
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    bundles = RuntimeBundle(copy.parent, runtime_bundle.target, runtime_bundle.key_file,
                            runtime_bundle.public_key)  # fmt: skip
    root = _repo(tmp_path, sshd, {"host-0": {"platform": "linux"}}, bundles)
    script = tmp_path / "install.py"
    script.write_text(STAND_IN)
    done = _bootstrap(root, "--script", str(script), "--known-hosts", str(known_hosts))
    assert done.returncode == 1
    assert "runtime bundle refused" in done.stdout and wheel.name in done.stdout
    assert not (tmp_path / "host" / "host-0").exists()


def test_bootstrap_refuses_unknown_host(
    sshd: Sshd, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """Without --accept-new a host missing from known_hosts is refused and nothing is run;
    with it the key is recorded in the repo's .engine/known_hosts; a host offering another
    key than the recorded one is refused even with --accept-new."""
    root = _repo(tmp_path, sshd, {"host-0": {"platform": "linux"}}, runtime_bundle)
    script = tmp_path / "install.py"
    script.write_text(STAND_IN)
    done = _bootstrap(root, "--script", str(script))
    assert done.returncode == 1
    assert "host key unknown" in done.stdout and "refused" in done.stderr
    assert not (tmp_path / "host" / "host-0").exists()
    kh = root / ".engine" / "known_hosts"
    assert not kh.exists()
    done = _bootstrap(root, "--script", str(script), "--accept-new")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sshd.host_public_key in kh.read_text()
    issued = _codes(root)["host-0"]

    other = new_key(tmp_path / "other_host_key")
    sshd.known_hosts(kh, key=" ".join(other.split()[:2]))
    shutil.rmtree(tmp_path / "host")
    done = _bootstrap(root, "--script", str(script), "--accept-new")
    assert done.returncode == 1 and "host key changed" in done.stdout
    assert not (tmp_path / "host").exists()
    assert _codes(root)["host-0"] != issued  # a fresh code, never sent anywhere


def test_bootstrap_needs_a_server_url_and_trusted_keys(
    sshd: Sshd, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """Without a server URL (devices enroll there) or without trusted keys (no bundle would be
    trusted) the command says what to set and issues no invite."""
    root = _repo(tmp_path, sshd, {"host-0": {"platform": "linux"}}, runtime_bundle)
    settings = yaml.safe_load((root / "engine.yaml").read_text())
    del settings["server_url"]
    (root / "engine.yaml").write_text(yaml.safe_dump(settings))
    done = _bootstrap(root)
    assert done.returncode == 1 and "pass --server URL or set server_url" in done.stderr
    settings["trusted_keys"] = []
    (root / "engine.yaml").write_text(yaml.safe_dump(settings))
    done = _bootstrap(root, "--server", SERVER)
    assert done.returncode == 1 and "names no trusted_keys" in done.stderr
    assert not (root / ".engine" / "state.db").exists()


#: What Windows OpenSSH's default shell (cmd.exe) answers to `sh -c ...`, on stderr.
CMD_EXE_ANSWER = """#!/bin/sh
printf "'sh' is not recognized as an internal or external command,\\r\\n" >&2
printf "operable program or batch file.\\r\\n" >&2
exit 1
"""


def test_bootstrap_says_a_windows_host_needs_the_installer_run_there(
    sshd: Sshd, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """A host whose shell answers as cmd.exe does (a second sshd whose ForceCommand says
    what cmd.exe says of `sh`; ``sshd`` skips the test where there is no sshd) fails with
    what to do instead, and nothing is uploaded."""
    answer = tmp_path / "cmd-exe"
    answer.write_text(CMD_EXE_ANSWER)
    answer.chmod(0o755)
    windows = Sshd(tmp_path / "sshd-windows", extra_config=[f"ForceCommand {answer}"])
    windows.start()
    try:
        root = _repo(tmp_path, windows, {"pos-0": {"platform": "linux"}}, runtime_bundle)
        script = tmp_path / "install.py"
        script.write_text(STAND_IN)
        done = _bootstrap(root, "--script", str(script), "--accept-new")
    finally:
        windows.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "a Windows host" in said and "/install/windows" in said, said
    assert not (tmp_path / "host").exists()
