"""The secrets source of config templates: a YAML file kept out of git, readable by its owner.

Format (docs/operator-repo.md)::

    digest_key: "9f86d0…"        # keys the config digests (32+ random characters)
    api_key: "s3cr3t"            # for every device
    devices:
      berlin-pos-0001:
        api_key: "other"         # this device's own value wins

Values are text or numbers. ``digest_key`` is not a secret templates can
read: it keys the digest of every config file that holds secrets, so that the
digest, which plans and the store publish, cannot be checked against guesses
of a secret (docs/adr/0026-keyed-config-digests.md). The file is found at
``$ENGINE_SECRETS_FILE``, else engine.yaml's ``secrets_file`` (relative to the
operator repo). On POSIX systems a file that its group or others may read is
refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import EngineError

__all__ = [
    "DIGEST_KEY",
    "ENV_VAR",
    "MASK",
    "MIN_DIGEST_KEY",
    "Secrets",
    "SecretsError",
    "load_secrets",
]

#: The environment variable naming the secrets file (wins over engine.yaml).
ENV_VAR = "ENGINE_SECRETS_FILE"
#: What a secret value is replaced with wherever it would be shown or stored.
MASK = "********"
#: The secrets file's entry that keys config digests (not a secret templates may read).
DIGEST_KEY = "digest_key"
#: Fewest characters of a digest key (``openssl rand -hex 32`` gives 64).
MIN_DIGEST_KEY = 32
_MAC_CONTEXT = b"fleet-rollout config file\0"


class SecretsError(EngineError):
    """The secrets file cannot be used (missing, unreadable, too open, malformed)."""


@dataclass(frozen=True)
class Secrets:
    """Secret values by name, with per-device overrides."""

    common: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    path: Path | None = None
    digest_key: bytes | None = field(default=None, repr=False)

    def for_device(self, device: str) -> dict[str, str]:
        """Every secret value ``device`` gets: the common ones, overridden by its own."""
        own = self.devices.get(device)
        return {**self.common, **own} if own else dict(self.common)

    def mac(self, data: bytes, *, needed_by: str) -> str:
        """``hmac-sha256:<hex>`` of a rendered file that holds secrets, keyed by ``digest_key``.

        Raises SecretsError naming ``needed_by`` (device and file) when the
        secrets file has no ``digest_key``.
        """
        if self.digest_key is None:
            where = self.path if self.path is not None else "the secrets file"
            raise SecretsError(
                f"{needed_by} holds secrets, and the digest of such a file is keyed: add "
                f"`{DIGEST_KEY}: <{MIN_DIGEST_KEY} or more random characters>` to {where} "
                "(e.g. the output of `openssl rand -hex 32`); every machine that plans or "
                "serves this repo needs the same one"
            )
        mac = hmac.new(self.digest_key, _MAC_CONTEXT + data, hashlib.sha256).hexdigest()
        return f"hmac-sha256:{mac}"

    def values(self) -> set[str]:
        """Every secret value (to check that none leaks into what is shown)."""
        found = set(self.common.values())
        for own in self.devices.values():
            found.update(own.values())
        return {v for v in found if v}


def _values(data: object, where: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise SecretsError(f"{where}: expected a mapping of names to values")
    out: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str):
            raise SecretsError(f"{where}: secret names are text, found {name!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SecretsError(f"{where}: {name}: a secret is text or a number")
        out[name] = str(value)
    return out


def _check_private(path: Path) -> None:
    if sys.platform == "win32":
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(
            f"{path}: readable by others (mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
        )


def load_secrets(root: Path, configured: str | None) -> Secrets:
    """The secrets of the operator repo at ``root`` (empty when no file is configured)."""
    name = os.environ.get(ENV_VAR) or configured
    if not name:
        return Secrets()
    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        _check_private(path)
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SecretsError(f"{path}: cannot read the secrets file: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SecretsError(f"{path}{line}: not YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SecretsError(f"{path}: expected a mapping of secret names to values")
    devices_raw = data.pop("devices", None) or {}
    if not isinstance(devices_raw, dict):
        raise SecretsError(f"{path}: devices: expected a mapping of device ids to secrets")
    key = _digest_key(data.pop(DIGEST_KEY, None), path)
    devices = {str(d): _values(v, f"{path}: devices.{d}") for d, v in devices_raw.items()}
    for device, own in devices.items():
        if DIGEST_KEY in own:
            raise SecretsError(
                f"{path}: devices.{device}.{DIGEST_KEY}: the digest key is one for the whole "
                "file: set it at the top level"
            )
    return Secrets(common=_values(data, str(path)), devices=devices, path=path, digest_key=key)


def _digest_key(value: object, path: Path) -> bytes | None:
    """The ``digest_key`` entry as bytes (None when absent); SecretsError when too short."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < MIN_DIGEST_KEY:
        raise SecretsError(
            f"{path}: {DIGEST_KEY}: use text of {MIN_DIGEST_KEY} or more random characters "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return value.encode()
