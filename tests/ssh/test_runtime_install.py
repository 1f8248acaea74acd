"""Installing `agent-runtime` on an agentless host over a real sshd (engine/ssh/_runtime.py):
the bundle is verified like a device verifies it (bundle.json.sig by a trusted key, then
every wheel) before anything is sent; a good bundle gives a working venv."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.signing import generate_key, public_key_text
from engine.ssh import Endpoint, SshError, SshSession
from engine.ssh._runtime import RuntimeInstaller
from engine.ssh.targets import SshTarget
from fleetbase.platform import Platform
from tests.bundles import RuntimeBundle
from tests.harness.sshd import Sshd


def _target(sshd: Sshd, known_hosts: Path, runtime_dir: Path) -> SshTarget:
    endpoint = Endpoint("127.0.0.1", sshd.port, sshd.user, sshd.client_key, known_hosts)
    return SshTarget("ssh-a", Platform.LINUX, endpoint, str(runtime_dir / "agent"),
                     str(runtime_dir), "process", {})  # fmt: skip


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["wheel-byte", "bundle-json-byte", "other-key", "extra-wheel"])
def test_tampered_bundle_installs_nothing(
    case: str, sshd: Sshd, known_hosts: Path, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """A flipped byte in a wheel or in bundle.json, a signature by a key not trusted, or a
    wheel bundle.json does not list: refused, naming the problem; no venv and no bundle
    directory on the host."""
    copy = runtime_bundle.copy_to(tmp_path / "bundles")
    trusted = runtime_bundle.public_key
    wheel = sorted(copy.glob("fleet_rollout-*.whl"))[0]
    if case == "wheel-byte":
        _flip(wheel)
    elif case == "bundle-json-byte":
        _flip(copy / "bundle.json")
    elif case == "other-key":
        trusted = public_key_text(generate_key().public_key())
    else:
        (copy / "zzz-1.0-py3-none-any.whl").write_bytes(wheel.read_bytes())
    expected = {"wheel-byte": f"{wheel.name}: sha256", "bundle-json-byte": "signature",
                "other-key": "signed by unknown key", "extra-wheel": "zzz-1.0"}[case]  # fmt: skip
    host = tmp_path / "host"
    target = _target(sshd, known_hosts, host)
    with (
        SshSession(target.endpoint) as session,
        pytest.raises(SshError, match="runtime bundle refused") as refused,
    ):
        RuntimeInstaller(copy.parent, [trusted]).ensure(session, target)
    assert expected in str(refused.value)
    assert not host.exists()


@pytest.mark.slow
def test_intact_bundle_installs_a_working_runtime_once(
    sshd: Sshd, known_hosts: Path, tmp_path: Path, runtime_bundle: RuntimeBundle
) -> None:
    """The verified bundle is uploaded and pip-installed offline into <runtime_dir>/venv; the
    installed agent-runtime runs, and a second ensure finds it without installing again."""
    host = tmp_path / "host"
    target = _target(sshd, known_hosts, host)
    installer = RuntimeInstaller(runtime_bundle.root, [runtime_bundle.public_key])
    with SshSession(target.endpoint) as session:
        exe = installer.ensure(session, target)
        assert exe == f"{host}/venv/bin/agent-runtime"
        assert "converge" in session.check([exe, "--help"], timeout=120)
        uploaded = sorted(p.name for p in (host / "bundle").iterdir())
        stamp = Path(exe).stat().st_mtime_ns
        assert installer.ensure(session, target) == exe
    assert Path(exe).stat().st_mtime_ns == stamp
    wheels = sorted(p.name for p in runtime_bundle.directory.glob("*.whl"))
    assert uploaded == wheels
