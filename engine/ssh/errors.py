"""Root of the SSH package's exceptions: one class per way reaching a host can fail."""

from __future__ import annotations

from engine.errors import EngineError

__all__ = [
    "HostKeyChangedError",
    "HostKeyUnknownError",
    "RemoteCommandError",
    "SshAuthError",
    "SshError",
    "SshTimeoutError",
    "SshUnreachableError",
]


class SshError(EngineError):
    """Base of every error the SSH package raises on purpose; ``kind`` names the failure."""

    kind = "error"


class SshUnreachableError(SshError):
    """The host cannot be reached: no route, refused, unknown name."""

    kind = "unreachable"


class SshTimeoutError(SshError):
    """Connecting, or a command on the host, took longer than allowed."""

    kind = "timeout"


class SshAuthError(SshError):
    """The host refused the login (wrong user or key)."""

    kind = "auth failed"


class HostKeyUnknownError(SshError):
    """The host's key is not in the known_hosts file (and --accept-new was not given)."""

    kind = "host key unknown"


class HostKeyChangedError(SshError):
    """The host offered a key other than the one recorded for it: always refused."""

    kind = "host key changed"


class RemoteCommandError(SshError):
    """A command on the host failed or answered something that is not understood;
    ``stderr``: all the command said there (the message keeps its last line)."""

    kind = "failed"

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr
