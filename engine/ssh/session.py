"""One SSH connection to a host (paramiko): host key checking, commands, sftp uploads.

Host keys are checked against a known_hosts file: a host it does not list is
refused unless ``accept_new`` (then its key is appended to the file), a key
other than the recorded one is always refused. Every failure raises an
``SshError`` subclass whose message is one line naming the host.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

import paramiko

from engine.ssh.errors import (
    HostKeyChangedError,
    HostKeyUnknownError,
    RemoteCommandError,
    SshAuthError,
    SshError,
    SshTimeoutError,
    SshUnreachableError,
)

__all__ = ["CommandResult", "Endpoint", "SshSession", "known_hosts_name"]

#: Appends to known_hosts files are serialised across threads (--forks).
_known_hosts_lock = threading.Lock()


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in."""

    host: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    """A finished remote command."""

    exit_status: int
    stdout: str
    stderr: str


def known_hosts_name(host: str, port: int) -> str:
    """The name a host is recorded under in known_hosts (``[host]:port`` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


class _Policy(paramiko.MissingHostKeyPolicy):
    """Unknown host: refuse, or record the key when ``accept_new``."""

    def __init__(self, endpoint: Endpoint, accept_new: bool) -> None:
        self.endpoint = endpoint
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        where = self.endpoint.known_hosts
        if not self.accept_new:
            raise HostKeyUnknownError(
                f"{self.endpoint}: host key unknown ({key.get_name()} "
                f"{key.fingerprint}); not in {where}: refused (check it, then pass --accept-new "
                "to record it)"
            )
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            where.parent.mkdir(parents=True, exist_ok=True)
            with open(where, "a", encoding="utf-8") as f:
                f.write(line)


class SshSession:
    """An open SSH connection; use as a context manager (closes on exit)."""

    def __init__(
        self, endpoint: Endpoint, *, accept_new: bool = False, timeout: float = 10.0
    ) -> None:
        """Connect and log in; raises an ``SshError`` subclass when that fails."""
        self.endpoint = endpoint
        self.timeout = timeout
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        client = paramiko.SSHClient()
        if endpoint.known_hosts.is_file():
            try:
                client.load_host_keys(str(endpoint.known_hosts))
            except (OSError, paramiko.SSHException) as e:
                raise SshError(f"{endpoint}: cannot read {endpoint.known_hosts}: {e}") from e
        client.set_missing_host_key_policy(_Policy(endpoint, accept_new))
        try:
            client.connect(
                endpoint.host,
                port=endpoint.port,
                username=endpoint.user,
                key_filename=str(endpoint.key_file) if endpoint.key_file else None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=endpoint.key_file is None,
            )
        except SshError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyChangedError(
                f"{endpoint}: host key changed (offered {e.key.get_name()} {e.key.fingerprint}, "
                f"{endpoint.known_hosts} has {e.expected_key.fingerprint}): refused; if the host "
                "was really reinstalled, remove its line from the known_hosts file"
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise SshAuthError(f"{endpoint}: authentication failed: {e}") from e
        except TimeoutError as e:
            client.close()
            raise SshTimeoutError(f"{endpoint}: timed out after {timeout:g}s connecting") from e
        except paramiko.SSHException as e:
            transport = client.get_transport()
            # paramiko reports a missing greeting from its thread and then "No existing session"
            greeted = transport is not None and bool(transport.remote_version)
            client.close()
            if not greeted or "banner" in str(e).lower():
                raise SshTimeoutError(f"{endpoint}: no SSH greeting within {timeout:g}s") from e
            raise SshError(f"{endpoint}: SSH failed: {e}") from e
        except OSError as e:
            client.close()
            why = e.strerror or str(e)
            raise SshUnreachableError(f"{endpoint}: unreachable: {why}") from e
        self.client = client

    def __enter__(self) -> SshSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close sftp and the connection."""
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        self.client.close()

    # -- commands -------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float, stdin: bytes = b"") -> CommandResult:
        """Run ``argv`` (quoted for the login shell) on the host; SshTimeoutError past
        ``timeout`` seconds."""
        command = " ".join(shlex.quote(a) for a in argv)
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshUnreachableError(f"{self.endpoint}: the connection was lost")
        try:
            chan = transport.open_session(timeout=self.timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if chan.exit_status_ready() and not chan.recv_ready():
                    if not chan.recv_stderr_ready():
                        break
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    chan.close()
                    raise SshTimeoutError(
                        f"{self.endpoint}: timed out after {timeout:g}s running {argv[0]}"
                    )
                select.select([chan], [], [], min(left, 0.5))
            status = chan.recv_exit_status()
            chan.close()
        except paramiko.SSHException as e:
            raise SshUnreachableError(f"{self.endpoint}: the connection failed: {e}") from e
        return CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, argv: list[str], *, timeout: float) -> str:
        """Run ``argv``; its stdout, or RemoteCommandError with its last stderr line."""
        res = self.run(argv, timeout=timeout)
        if res.exit_status != 0:
            last = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
            raise RemoteCommandError(
                f"{self.endpoint}: {argv[0]} exited with {res.exit_status}: {last}", res.stderr
            )
        return res.stdout

    # -- files ----------------------------------------------------------------------------

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The connection's sftp client (opened on first use)."""
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except paramiko.SSHException as e:
                raise SshError(f"{self.endpoint}: sftp is not available: {e}") from e
        return self._sftp

    def home(self) -> str:
        """The login's home directory on the host."""
        if self._home is None:
            self._home = self.sftp.normalize(".")
        return self._home

    def path(self, remote: str) -> str:
        """``remote`` made absolute: ``~/x`` and relative paths start at the login's home."""
        if remote.startswith("~/"):
            remote = remote[2:]
        if remote.startswith("/"):
            return remote
        return str(PurePosixPath(self.home()) / remote)

    def makedirs(self, remote: str, mode: int = 0o700) -> None:
        """Create ``remote`` (absolute) and its parents when missing."""
        missing: list[str] = []
        at = PurePosixPath(remote)
        while str(at) not in ("/", "."):
            try:
                if stat.S_ISDIR(self.sftp.stat(str(at)).st_mode or 0):
                    break
            except FileNotFoundError:
                missing.append(str(at))
                at = at.parent
                continue
            raise SshError(f"{self.endpoint}: {at} exists and is not a directory")
        for d in reversed(missing):
            try:
                self.sftp.mkdir(d, mode)
            except OSError:
                # another connection (--forks) may have made it a moment ago
                if not stat.S_ISDIR(self.sftp.stat(d).st_mode or 0):
                    raise

    def write(self, remote: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``data`` to ``remote`` atomically (temp file, then rename)."""
        tmp = f"{remote}.tmp"
        with self.sftp.open(tmp, "wb") as f:
            f.write(data)
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, remote)

    def upload(self, local: Path, remote: str, mode: int = 0o600) -> bool:
        """Copy ``local`` to ``remote`` unless a file of the same size is there; True if copied."""
        size = local.stat().st_size
        try:
            if self.sftp.stat(remote).st_size == size:
                return False
        except FileNotFoundError:
            pass
        tmp = f"{remote}.tmp"
        self.sftp.put(str(local), tmp)
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, remote)
        return True
