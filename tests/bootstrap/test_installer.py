"""The installer's own parts, run in-process: its pure-Python ed25519 against the project's
signer, and refusals that install nothing (a flipped byte in a wheel or in bundle.json, a
bundle signed by another key, a wheel bundle.json does not list); the runtime home's
launcher and the conversion of an old plain-venv prefix, on a home of stand-in versions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.services.supervised_service import supervised_argv
from engine.install import bootstrap_script as installer
from engine.signing import generate_key, public_key_text
from tests.bootstrap.conftest import FieldDevice, resign
from tests.bundles import RuntimeBundle


def test_ed25519_agrees_with_the_project_signer() -> None:
    """Signatures made by states.signing verify; a changed message or signature does not."""
    for _ in range(3):
        key = generate_key()
        raw = key.public_key().public_bytes_raw()
        message = b"bundle.json bytes \x00\xff"
        signature = key.sign(message)
        assert installer.ed25519_verify(raw, signature, message)
        assert not installer.ed25519_verify(raw, signature, message + b"!")
        flipped = signature[:5] + bytes([signature[5] ^ 1]) + signature[6:]
        assert not installer.ed25519_verify(raw, flipped, message)


def test_ed25519_rfc8032_test_vector() -> None:
    """RFC 8032 section 7.1 TEST 2 verifies; the wrong length of key or signature does not."""
    pub = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    sig = bytes.fromhex(
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )
    assert installer.ed25519_verify(pub, sig, b"\x72")
    assert not installer.ed25519_verify(pub[:31], sig, b"\x72")
    assert not installer.ed25519_verify(pub, sig[:63], b"\x72")


def _install(field: FieldDevice, bundle: Path, prefix: Path, key: str) -> int:
    return installer.main([
        "--device", "field-01", "--code", "abc", "--server", "http://127.0.0.1:9",
        "--service", "none", "--prefix", str(prefix), "--agent-root", str(field.agent_root),
        "--bundle-dir", str(bundle), "--pinned-key", key, "--json",
    ])  # fmt: skip


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["wheel-byte", "bundle-json-byte", "other-key", "extra-wheel"])
def test_a_tampered_bundle_installs_nothing(
    case: str,
    runtime_bundle: RuntimeBundle,
    field_device: FieldDevice,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each tampering is refused with a message naming it; no venv, config or state appears
    and the agent's files are untouched."""
    pinned = runtime_bundle.public_key
    bundle = runtime_bundle.copy_to(tmp_path)
    wheel = sorted(bundle.glob("fleet_rollout-*.whl"))[0]
    expected = {"wheel-byte": f"bundle file {wheel.name}: sha256",
                "bundle-json-byte": "not signed by a pinned key",
                "other-key": "not signed by a pinned key",
                "extra-wheel": "does not list: zzz-1.0-py3-none-any.whl"}[case]  # fmt: skip
    if case == "wheel-byte":
        _flip(wheel, wheel.stat().st_size // 2)
    elif case == "bundle-json-byte":
        _flip(bundle / "bundle.json", 20)
    elif case == "other-key":
        pinned = public_key_text(generate_key().public_key())
    else:
        shutil.copy2(wheel, bundle / "zzz-1.0-py3-none-any.whl")
    before = field_device.files()
    prefix = tmp_path / "runtime"
    assert _install(field_device, bundle, prefix, pinned) == 1
    result = json.loads(capsys.readouterr().out)
    assert not result["ok"] and expected in result["error"], result["error"]
    assert not prefix.exists()
    assert field_device.files() == before


def test_a_bundle_for_another_python_is_refused(
    runtime_bundle: RuntimeBundle,
    field_device: FieldDevice,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A correctly signed bundle for Python 3.99 is refused naming both versions."""
    bundle = runtime_bundle.copy_to(tmp_path)
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["python"] = "3.99"
    (bundle / "bundle.json").write_text(json.dumps(doc))
    resign(bundle, runtime_bundle.key_file)
    assert _install(field_device, bundle, tmp_path / "runtime", runtime_bundle.public_key) == 1
    assert "this host is linux Python" in json.loads(capsys.readouterr().out)["error"]
    assert not (tmp_path / "runtime").exists()


def test_missing_service_manager_is_named(
    field_device: FieldDevice, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asking for systemd where PID 1 is not systemd fails, saying why and offering
    --service none."""
    monkeypatch.setattr(
        installer,
        "detect",
        lambda: installer.Host("linux", "x86_64", "3.11", "none", "PID 1 is 'sh'"),
    )
    code = installer.main(["--device", "d", "--service", "systemd", "--server", "http://x"])
    assert code == 1
    err = capsys.readouterr().err
    assert "PID 1 is 'sh'" in err and "--service none" in err


def test_the_supervisor_command_is_the_supervised_services() -> None:
    """The command the installer names (and the unit / plist run) is the one
    agent_runtime/services/supervised_service.py builds, with this Python."""
    home, config = Path("/opt/agent runtime"), Path("/etc/agent-runtime/config.yaml")
    for timeout in (120.0, 2.5):
        assert installer.supervisor_argv(home, config, timeout) == supervised_argv(
            Path(sys.executable), home, config, timeout
        )


def _paths(prefix: Path) -> installer.Paths:
    return installer.Paths(prefix, prefix / "etc", prefix / "state", prefix.parent / "agent")


def _fake_version(home: Path, version: str) -> None:
    exe = home / "versions" / version / "bin" / "agent-runtime"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\necho "runtime {version}: $*"\n')
    exe.chmod(0o755)


def _launch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(home / "bin" / "agent-runtime"), *args], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


def test_the_launcher_runs_the_current_runtime(tmp_path: Path) -> None:
    """bin/agent-runtime runs runtime.json's current version with the arguments given, follows
    a change of current (as the supervisor makes one), and says so when there is none; a
    second finish_home changes nothing."""
    home = tmp_path / "runtime"
    for version in ("0.1.0", "0.2.0"):
        _fake_version(home, version)
    (home / "runtime.json").write_text(json.dumps({"current": "0.1.0", "trial": None}))
    report = installer.Report("d")
    installer.finish_home(_paths(home), report)
    assert report.changed == [f"{home / 'bin' / 'agent-runtime'} runs the current runtime"]
    assert _launch(home, "status", "--json").stdout == "runtime 0.1.0: status --json\n"
    (home / "runtime.json").write_text(json.dumps({"current": "0.2.0", "trial": None}))
    assert _launch(home, "--version").stdout == "runtime 0.2.0: --version\n"
    again = installer.Report("d")
    installer.finish_home(_paths(home), again)
    assert again.changed == []
    (home / "runtime.json").unlink()
    failed = _launch(home, "status")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"agent-runtime: no current runtime in {home}: ")


def test_a_plain_venv_prefix_loses_only_the_venvs_files(tmp_path: Path) -> None:
    """The old layout's venv files go (bin's scripts replaced by the launcher, pyvenv.cfg
    last); config, token, state and the new home stay byte for byte; a directory holding the
    config is never removed, even under a venv name."""
    home = tmp_path / "runtime"
    _fake_version(home, "0.1.0")
    (home / "runtime.json").write_text(json.dumps({"current": "0.1.0", "trial": None}))
    for name in ("pyvenv.cfg", "bin/python", "bin/pip", "bin/agent-runtime", "lib/python3.11/x.py",
                 "include/site/y.h", "etc/config.yaml", "etc/token", "state/state.json",
                 "share/config/config.yaml"):  # fmt: skip
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(name)
    (home / "lib64").symlink_to("lib")
    paths = _paths(home)
    paths.config_dir = home / "share" / "config"
    kept = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and
            p.parts[len(home.parts)] in ("etc", "state", "versions", "share")}  # fmt: skip
    report = installer.Report("d")
    installer.finish_home(paths, report)
    assert sorted(p.name for p in home.iterdir()) == [
        "bin", "etc", "runtime.json", "share", "state", "versions"]  # fmt: skip
    assert [p.name for p in (home / "bin").iterdir()] == ["agent-runtime"]
    assert {p: p.read_bytes() for p in kept} == kept
    assert _launch(home, "x").stdout == "runtime 0.1.0: x\n"
    assert len(report.changed) == 1 and "old runtime venv's files removed" in report.changed[0]


def test_a_non_positive_confirm_timeout_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--confirm-timeout 0 is one clear error, before anything is installed."""
    code = installer.main(["--device", "d", "--service", "none", "--server", "http://x",
                           "--confirm-timeout", "0"])  # fmt: skip
    assert code == 1
    assert "--confirm-timeout must be positive, not 0" in capsys.readouterr().err
