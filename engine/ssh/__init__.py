"""SSH push (paramiko): `engine bootstrap` and `engine apply --transport ssh`.

See docs/ssh.md for the inventory settings, host key rules and the flow.
"""

from engine.ssh.drive import drive_rollouts, make_relay
from engine.ssh.errors import (
    HostKeyChangedError,
    HostKeyUnknownError,
    RemoteCommandError,
    SshAuthError,
    SshError,
    SshTimeoutError,
    SshUnreachableError,
)
from engine.ssh.push import AgentlessRelay, RoundResult
from engine.ssh.session import CommandResult, Endpoint, SshSession
from engine.ssh.targets import SshTarget, ssh_settings, ssh_targets

__all__ = [
    "AgentlessRelay",
    "CommandResult",
    "Endpoint",
    "HostKeyChangedError",
    "HostKeyUnknownError",
    "RemoteCommandError",
    "RoundResult",
    "SshAuthError",
    "SshError",
    "SshSession",
    "SshTarget",
    "SshTimeoutError",
    "SshUnreachableError",
    "drive_rollouts",
    "make_relay",
    "ssh_settings",
    "ssh_targets",
]
