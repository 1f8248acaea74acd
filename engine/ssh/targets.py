"""Which devices the engine reaches over SSH, and how: the inventory's ``ssh`` settings resolved.

A device's settings are its own ``ssh`` over those of the highest-priority
group it belongs to that has ``ssh`` (ties: the first by name), key by key.
``{device}`` in a text value becomes the device id; relative key and
known_hosts paths resolve against the operator repo.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.ssh.errors import SshError
from engine.ssh.session import Endpoint
from fleetbase.platform import Platform
from inventory.loader import OperatorRepo
from inventory.membership import groups_of
from inventory.models import SshSettings

__all__ = [
    "DEFAULT_AGENT_ROOT",
    "DEFAULT_KNOWN_HOSTS",
    "DEFAULT_RUNTIME_DIR",
    "SshTarget",
    "ssh_settings",
    "ssh_targets",
]

DEFAULT_AGENT_ROOT = "/opt/Wegweiser/Agent"
DEFAULT_RUNTIME_DIR = ".agent-runtime"
#: Default known_hosts file, relative to the operator repo.
DEFAULT_KNOWN_HOSTS = ".engine/known_hosts"


@dataclass(frozen=True)
class SshTarget:
    """One device reached over SSH, every setting resolved."""

    device: str
    platform: Platform
    endpoint: Endpoint
    agent_root: str
    runtime_dir: str
    service: str
    runtime_config: dict[str, Any]


def ssh_settings(repo: OperatorRepo, device: str) -> SshSettings | None:
    """The device's ``ssh`` over its group's, or None when neither has any."""
    inv = repo.inventory
    default: SshSettings | None = None
    best: tuple[int, str] | None = None
    for name in groups_of(inv, device):
        group = inv.groups[name]
        if group.ssh is None:
            continue
        rank = (-group.priority, name)
        if best is None or rank < best:
            best, default = rank, group.ssh
    own = inv.devices[device].ssh
    if own is None:
        return default
    return own.over(default)


def _path(root: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else root / path


def _target(repo: OperatorRepo, device: str, s: SshSettings, known_hosts: Path | None) -> SshTarget:
    def sub(value: str | None) -> str | None:
        return None if value is None else value.replace("{device}", device)

    host = sub(s.host)
    if not host:
        raise SshError(f"device {device}: ssh settings name no host (inventory: ssh.host)")
    platform = repo.inventory.devices[device].platform
    key = sub(s.key_file)
    default_service = "launchd" if platform is Platform.MACOS else "systemd"
    endpoint = Endpoint(
        host=host,
        port=s.port or 22,
        user=sub(s.user) or getpass.getuser(),
        key_file=_path(repo.root, key) if key else None,
        known_hosts=known_hosts or _path(repo.root, sub(s.known_hosts) or DEFAULT_KNOWN_HOSTS),
    )
    return SshTarget(
        device=device,
        platform=platform,
        endpoint=endpoint,
        agent_root=sub(s.agent_root) or DEFAULT_AGENT_ROOT,
        runtime_dir=sub(s.runtime_dir) or DEFAULT_RUNTIME_DIR,
        service=s.service or default_service,
        runtime_config=dict(s.runtime_config or {}),
    )


def ssh_targets(
    repo: OperatorRepo, devices: Iterable[str], *, known_hosts: Path | None = None
) -> tuple[dict[str, SshTarget], list[str]]:
    """The SSH targets of ``devices`` that have ssh settings, and the ids of those without.

    ``known_hosts`` overrides every device's known_hosts file. SshError when a
    device's settings name no host.
    """
    found: dict[str, SshTarget] = {}
    without: list[str] = []
    for device in devices:
        s = ssh_settings(repo, device)
        if s is None:
            without.append(device)
        else:
            found[device] = _target(repo, device, s, known_hosts)
    return found, without
