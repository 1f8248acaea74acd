"""Putting `agent-runtime` on an agentless host: a venv under the runtime directory.

When ``<runtime_dir>/venv/bin/agent-runtime`` is missing, the runtime bundle
for the host's target (``<platform>-<arch>-py<X.Y>``, as `engine runtime
bundle` writes it under ``.engine/runtime-bundles/``) is checked against its
``bundle.json``, uploaded, and installed offline with pip (``--no-index``).
Devices on one host share the venv; one install per host runs at a time.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from engine.ssh.errors import SshError
from engine.ssh.session import SshSession
from engine.ssh.targets import SshTarget

__all__ = ["RuntimeInstaller", "remote_target"]

#: Seconds an offline pip install of the runtime may take on a host.
INSTALL_TIMEOUT = 600.0
_PLATFORMS = {"Linux": "linux", "Darwin": "macos"}


def remote_target(session: SshSession) -> str:
    """The host's bundle target, e.g. ``linux-x86_64-py3.11`` (from uname and python3)."""
    script = "uname -s; uname -m; python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'"
    out = session.check(["sh", "-c", script], timeout=30)
    lines = out.split()
    if len(lines) != 3:
        raise SshError(f"{session.endpoint}: cannot tell the host's platform from {out!r}")
    system, arch, python = lines
    platform = _PLATFORMS.get(system)
    if platform is None:
        raise SshError(f"{session.endpoint}: {system} hosts are not supported over SSH")
    return f"{platform}-{arch}-py{python}"


class RuntimeInstaller:
    """Finds or installs the runtime on a host; bundles come from ``bundles_dir``."""

    def __init__(self, bundles_dir: Path) -> None:
        """Install from the bundles under ``bundles_dir`` when a host has no runtime."""
        self.bundles_dir = bundles_dir
        self._locks: dict[tuple[str, int, str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def ensure(self, session: SshSession, target: SshTarget) -> str:
        """The path of `agent-runtime` on the host, installing it first when missing."""
        root = session.path(target.runtime_dir)
        exe = f"{root}/venv/bin/agent-runtime"
        if self._present(session, exe):
            return exe
        e = target.endpoint
        with self._guard:
            lock = self._locks.setdefault((e.host, e.port, e.user, root), threading.Lock())
        with lock:
            if not self._present(session, exe):
                self._install(session, root)
        return exe

    @staticmethod
    def _present(session: SshSession, path: str) -> bool:
        try:
            session.sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _install(self, session: SshSession, root: str) -> None:
        name = remote_target(session)
        bundle = self.bundles_dir / name
        files = _checked_files(bundle, name)
        remote = f"{root}/bundle"
        session.makedirs(remote)
        for path in files:
            session.upload(path, f"{remote}/{path.name}")
        venv = f"{root}/venv"
        session.check(["python3", "-m", "venv", venv], timeout=INSTALL_TIMEOUT)
        session.check(
            [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index",
             "--find-links", remote, "fleet-rollout"],
            timeout=INSTALL_TIMEOUT,
        )  # fmt: skip


def _checked_files(bundle: Path, name: str) -> list[Path]:
    """The bundle's files after checking each one's sha256 and size against bundle.json."""
    try:
        doc = json.loads((bundle / "bundle.json").read_text())
        listed = [(str(f["name"]), str(f["sha256"]), int(f["size"])) for f in doc["files"]]
    except FileNotFoundError as e:
        raise SshError(
            f"the host has no runtime and there is no runtime bundle for {name} in "
            f"{bundle.parent}: build one with `engine runtime bundle --target {name}`"
        ) from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SshError(f"{bundle}/bundle.json is not a runtime bundle manifest: {e}") from e
    out: list[Path] = []
    for file_name, sha256, size in listed:
        path = bundle / file_name
        if "/" in file_name or not path.is_file():
            raise SshError(f"runtime bundle {bundle}: {file_name} is missing")
        data = path.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            raise SshError(f"runtime bundle {bundle}: {file_name} does not match bundle.json")
        out.append(path)
    return out
