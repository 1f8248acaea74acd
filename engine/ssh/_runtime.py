"""Putting `agent-runtime` on an agentless host: a venv under the runtime directory.

When ``<runtime_dir>/venv/bin/agent-runtime`` is missing, the runtime bundle
for the host's target (``<platform>-<arch>-py<X.Y>``, as `engine runtime
bundle` writes it under engine.yaml's ``runtime_bundles``) is verified as a
device would verify it (``states.bundle.verify_bundle``: ``bundle.json.sig``
by a trusted key, then exactly the listed wheels, byte for byte), uploaded,
and installed offline with pip (``--no-index``). A bundle that fails the
check is refused before anything reaches the host. Devices on one host share
the venv; one install per host runs at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.ssh.errors import RemoteCommandError, SshError
from engine.ssh.session import SshSession
from engine.ssh.targets import SshTarget
from states.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, BundleManifest, verify_bundle
from states.signing import SignatureError, raw_trusted_keys

__all__ = ["RuntimeInstaller", "checked_bundle", "remote_target"]

#: Seconds an offline pip install of the runtime may take on a host.
INSTALL_TIMEOUT = 600.0
_PLATFORMS = {"Linux": "linux", "Darwin": "macos"}
#: cmd.exe: "'sh' is not recognized as an internal or external command"; PowerShell: "The
#: term 'sh' is not recognized as a name of a cmdlet, function, script file, or ...".
_NOT_RECOGNIZED = "is not recognized as"


def remote_target(session: SshSession) -> str:
    """The host's bundle target, e.g. ``linux-x86_64-py3.11`` (from uname and python3)."""
    script = "uname -s; uname -m; python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'"
    try:
        out = session.check(["sh", "-c", script], timeout=30)
    except RemoteCommandError as e:
        if _NOT_RECOGNIZED not in e.stderr:  # cmd.exe or PowerShell, which know no `sh`
            raise
        raise SshError(
            f"{session.endpoint}: a Windows host (its shell has no `sh`): engine bootstrap "
            "installs over SSH on Linux and macOS only; on Windows run the installer "
            "served at /install/windows on the device (docs/install.md)"
        ) from e
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

    def __init__(self, bundles_dir: Path, trusted_keys: list[str]) -> None:
        """Install from the bundles under ``bundles_dir``, signed by one of ``trusted_keys``
        (``ed25519:<base64>``), when a host has no runtime."""
        self.bundles_dir = bundles_dir
        self.trusted_keys = trusted_keys
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
        manifest = checked_bundle(bundle, name, self.trusted_keys)
        remote = f"{root}/bundle"
        session.makedirs(remote)
        for entry in manifest.files:
            session.upload(bundle / entry.name, f"{remote}/{entry.name}")
        venv = f"{root}/venv"
        try:
            session.check(["python3", "-m", "venv", venv], timeout=INSTALL_TIMEOUT)
            session.check(
                [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index",
                 "--find-links", remote, f"fleet-rollout=={manifest.runtime_version}"],
                timeout=INSTALL_TIMEOUT,
            )  # fmt: skip
        except RemoteCommandError:
            session.run(["rm", "-rf", venv], timeout=INSTALL_TIMEOUT)  # no half-made venv
            raise


def checked_bundle(bundle: Path, name: str, trusted_keys: list[str]) -> BundleManifest:
    """The manifest of the bundle of target ``name`` at ``bundle`` once it is verified;
    SshError saying what is wrong (missing, unsigned, another key, a file changed)."""
    if not (bundle / MANIFEST_NAME).is_file():
        raise SshError(
            f"the host has no runtime and there is no runtime bundle for {name} in "
            f"{bundle.parent}: build one with `engine runtime bundle --target {name}`"
        )
    if not trusted_keys:
        raise SshError(
            f"runtime bundle {bundle}: no trusted keys to check {SIGNATURE_NAME} with "
            "(engine.yaml trusted_keys)"
        )
    try:
        manifest = verify_bundle(bundle, raw_trusted_keys(trusted_keys))
    except (BundleError, SignatureError) as e:
        raise SshError(f"runtime bundle refused: {e}") from e
    if manifest.target != name:
        raise SshError(f"runtime bundle {bundle}: bundle.json is for {manifest.target}, not {name}")
    return manifest
