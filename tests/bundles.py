"""Runtime bundles for tests, built offline from the wheelhouse ``scripts/setup`` caches.

``build_runtime_bundle(dest)`` runs the real ``engine runtime bundle`` for this
machine's target with ``--no-index --find-links .venv/wheelhouse``, signed by a
fresh key. The session fixture ``runtime_bundle`` (tests/conftest.py) builds
one per test session; tests that tamper with it work on ``copy_to(dir)``.
Without the wheelhouse the tests skip locally and fail when $CI is "true".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.bundles import local_target
from engine.signing import generate_key, private_key_pem, public_key_text

__all__ = [
    "REPO_ROOT",
    "WHEELHOUSE",
    "RuntimeBundle",
    "build_runtime_bundle",
    "install_runtime_venv",
    "offline_pip_env",
    "require_wheelhouse",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Wheels of the runtime's dependencies for this machine (scripts/setup).
WHEELHOUSE = REPO_ROOT / ".venv" / "wheelhouse"


@dataclass(frozen=True)
class RuntimeBundle:
    """A signed runtime bundle for this machine: ``root/<target>/`` and the key that signed it.

    ``root`` is what engine.yaml's ``runtime_bundles`` (or ``--bundle-dir`` of the
    bootstrap script's parent) points at; ``directory`` is the target's bundle.
    """

    root: Path
    target: str
    key_file: Path  # the ed25519 private key (PEM) that signed bundle.json
    public_key: str  # its pinned form, "ed25519:<base64>"

    @property
    def directory(self) -> Path:
        """The bundle of ``target``: the wheels, bundle.json and bundle.json.sig."""
        return self.root / self.target

    def copy_to(self, dest: Path) -> Path:
        """A copy of the target's bundle at ``dest/<target>`` (to tamper with); returns it."""
        copy = dest / self.target
        shutil.copytree(self.directory, copy)
        return copy


def require_wheelhouse() -> Path:
    """The wheelhouse; skip the test without it (fail when $CI is "true")."""
    if not any(WHEELHOUSE.glob("pydantic-*.whl")):
        message = f"no runtime wheelhouse at {WHEELHOUSE}: run scripts/setup"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return WHEELHOUSE


def build_runtime_bundle(dest: Path) -> RuntimeBundle:
    """Build and sign a bundle for this machine under ``dest/bundles`` with the real CLI."""
    wheelhouse = require_wheelhouse()
    key = generate_key()
    key_file = dest / "bundle-signing.key"
    dest.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    root = dest / "bundles"
    cmd = [sys.executable, "-m", "engine", "runtime", "bundle", "-C", str(dest), "--json"]
    cmd += ["--no-index", "--find-links", str(wheelhouse), "--out", str(root)]
    cmd += ["--key", str(key_file)]
    env = {k: v for k, v in offline_pip_env().items() if not k.startswith("ENGINE_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, f"engine runtime bundle failed:\n{proc.stdout}\n{proc.stderr}"
    (built,) = json.loads(proc.stdout)["bundles"]
    assert built["target"] == local_target().name
    return RuntimeBundle(root, built["target"], key_file, public_key_text(key.public_key()))


def offline_pip_env() -> dict[str, str]:
    """This environment without pip's configuration (no machine-wide index or find-links):
    pip sees only what a command names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def install_runtime_venv(bundle_dir: Path, venv: Path) -> Path:
    """A new venv at ``venv`` with the runtime installed offline from the bundle at
    ``bundle_dir`` alone (``pip install --no-index --find-links``); returns its bin dir."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    (wheel,) = bundle_dir.glob("fleet_rollout-*.whl")
    cmd = [str(bin_dir / "python"), "-m", "pip", "install", "--no-index"]
    cmd += ["--find-links", str(bundle_dir), str(wheel)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=offline_pip_env(), timeout=300, check=False
    )
    assert proc.returncode == 0, f"offline install failed:\n{proc.stdout}\n{proc.stderr}"
    return bin_dir
