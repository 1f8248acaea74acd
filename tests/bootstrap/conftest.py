"""Fixtures for installing the runtime onto a field device (the signed runtime bundle is
tests/conftest.py's session fixture ``runtime_bundle``).

``FieldDevice`` is a device as the field's old snippet left it: the example
agent 3.0.0's files in place under ``agent/``, the agent running as a plain
process from there, and no runtime. ``legacy_install`` puts the runtime on it
as the installer did before runtime self-update (a plain venv at the prefix).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.install import bootstrap_script as installer
from engine.signing import load_private_key, sign
from tests.bundles import install_runtime_venv
from tests.harness.procs import kill_processes_under

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "examples" / "fleet" / "artifacts"


def resign(bundle: Path, key: Path) -> None:
    """Sign ``bundle``'s (edited) bundle.json again with ``key``."""
    data = (bundle / "bundle.json").read_bytes()
    (bundle / "bundle.json.sig").write_bytes(sign(data, [load_private_key(key)]))


class FieldDevice:
    """The example agent 3.0.0 in place under ``base/agent``, running as a plain process."""

    def __init__(self, base: Path, version: str = "3.0.0") -> None:
        self.base = base
        self.agent_root = base / "agent"
        shutil.copytree(ARTIFACTS / version / "linux", self.agent_root)
        self.proc: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> int:
        """Start ``python nats_agent.py`` in the agent root, as the old snippet's service did."""
        env = {**os.environ, "HEARTBEAT_INTERVAL": "0.5", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(self.base / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "nats_agent.py"], cwd=self.agent_root, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.proc.pid

    def files(self) -> dict[str, tuple[bytes, int]]:
        """Every agent file's bytes and mode (heartbeat and bytecode excluded: they change)."""
        out = {}
        for path in sorted(self.agent_root.rglob("*")):
            rel = path.relative_to(self.agent_root).as_posix()
            if path.is_file() and rel != "heartbeat.json" and "__pycache__" not in rel:
                out[rel] = (path.read_bytes(), path.stat().st_mode)
        return out

    def stop(self) -> None:
        """Kill every process still running from this device's directory."""
        kill_processes_under(self.base)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


@pytest.fixture
def field_device(tmp_path: Path) -> Iterator[FieldDevice]:
    """A field device under tmp_path/field; every process from it is killed afterwards."""
    device = FieldDevice(tmp_path / "field")
    yield device
    device.stop()


def legacy_install(script: str, bundle: Path, args: list[str]) -> Path:
    """The runtime as the installer set it up before runtime self-update: a plain venv at
    ``--prefix`` (``python -m venv`` + ``pip install --no-index`` from the bundle, as that
    installer did), the device config it wrote (with the keys ``script`` pins), enrollment
    and adoption by that venv's ``agent-runtime``. ``args`` are the installer's (``--code``
    included); returns the config file."""
    pinned = re.search(r"^PINNED_KEYS: list\[str\] = (.*)$", script, re.MULTILINE)
    assert pinned is not None, "the served installer pins no keys"
    host = installer.detect()
    ns = installer.parse_args(args, host)
    paths = installer.default_paths(host.platform, ns)
    install_runtime_venv(bundle, paths.prefix)
    keys = ast.literal_eval(pinned.group(1))
    installer._write_private(paths.config, installer.device_config(ns, host, paths, keys))
    installer._write_private(paths.code_file, ns.code + "\n")
    runtime = str(paths.prefix / "bin" / "agent-runtime")
    for argv in (["enroll"], ["adopt", "--json"]):
        done = subprocess.run([runtime, *argv, "--config", str(paths.config)],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    return paths.config
