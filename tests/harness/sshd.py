"""A real OpenSSH server on 127.0.0.1 for tests and benchmarks.

``Sshd`` starts ``/usr/sbin/sshd -D -e -f <config>`` on a free port with a
host key and an authorized client key generated for it, logging in as the
current user (root: ``PermitRootLogin prohibit-password``), and stops it.
scripts/setup installs Debian's openssh-server.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.harness.procs import free_port

__all__ = ["SSHD", "Sshd", "copy_key", "new_key", "sshd_missing"]

SSHD = Path("/usr/sbin/sshd")


def new_key(path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format, 0600) to ``path``; its public line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode() + f" {path.stem}"
    path.with_suffix(".pub").write_text(line + "\n")
    return line


def sshd_missing() -> str | None:
    """Why no test sshd can run here, or None."""
    if not SSHD.is_file():
        return f"{SSHD} not found: scripts/setup installs Debian's openssh-server (as root)"
    return None


class Sshd:
    """One sshd process with its own host key, client key and config under ``base``."""

    def __init__(self, base: Path, extra_config: list[str] | None = None) -> None:
        """An sshd under ``base``; ``extra_config``: sshd_config lines appended (say a
        ``ForceCommand`` that answers as another OS's shell would)."""
        self.base = base
        self.extra_config = list(extra_config or [])
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = base / "ssh_host_ed25519_key"
        self.client_key = base / "client_ed25519"
        self.authorized_keys = base / "authorized_keys"
        self.config = base / "sshd_config"
        self.log = base / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host_public_key(self) -> str:
        """The host key's public line (``ssh-ed25519 AAAA...``)."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def start(self, timeout: float = 10.0) -> None:
        """Generate the keys, write the config, start sshd and wait for its greeting."""
        self.base.mkdir(parents=True, exist_ok=True)
        new_key(self.host_key)
        self.authorized_keys.write_text(new_key(self.client_key) + "\n")
        root = os.geteuid() == 0
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.base / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            f"PermitRootLogin {'prohibit-password' if root else 'no'}",
            f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp",
            "MaxStartups 50:30:100",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            "UseDNS no",
            *self.extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        if root:  # sshd insists on its privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(64).startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer within {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        """The end of sshd's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop sshd (its sessions end with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def known_hosts(self, path: Path, *, key: str | None = None) -> Path:
        """Write a known_hosts file at ``path`` listing this server's key (or ``key``)."""
        name = f"[127.0.0.1]:{self.port}"
        path.write_text(f"{name} {key or self.host_public_key}\n")
        return path


def copy_key(sshd: Sshd, to: Path) -> Path:
    """A copy of the authorized client key at ``to`` (0600)."""
    shutil.copy2(sshd.client_key, to)
    to.chmod(0o600)
    return to
