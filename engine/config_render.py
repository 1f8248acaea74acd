"""Rendering a device's managed config files and flags: the bundle it gets, and a masked copy.

A release's ``config`` lists templates of the operator repo; each is rendered
in Jinja2's sandbox with the device's variables (its group's ``vars``
overridden by its own), its effective flags and, for the names the release
declares secret, the values of the secrets file. The real bundle goes to the
device only (at check-in); what plans show, store and diff is rendered again
with every secret replaced by ``MASK``, so no secret value can reach them.
A file that declares secrets enters the config digest by its HMAC keyed with
the secrets file's ``digest_key`` (``Secrets.mac``), so the published digest
cannot be checked against guesses of a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from engine.errors import EngineError
from engine.secrets_file import MASK, Secrets, SecretsError
from fleetbase.version import Version
from inventory.flags import effective_flags, wanted_flags
from inventory.models import Device, Inventory
from states.config_bundle import ConfigBundle, RenderedFile, config_digest
from states.manifest import ConfigFileSpec, ReleaseManifest

__all__ = ["ConfigRenderError", "ConfigRenderer", "RenderedConfig"]


class ConfigRenderError(EngineError):
    """A device's config cannot be rendered (template error, missing secret)."""


class _Release(Protocol):
    @property
    def manifest(self) -> ReleaseManifest: ...


class _Repo(Protocol):
    @property
    def root(self) -> Path: ...
    @property
    def inventory(self) -> Inventory: ...
    @property
    def assignment(self) -> Mapping[str, str]: ...
    @property
    def releases(self) -> Mapping[Version, Any]: ...


@dataclass(frozen=True)
class RenderedConfig:
    """One device's config: the bundle it installs and the same files with secrets masked."""

    bundle: ConfigBundle
    masked: dict[str, str]

    @property
    def digest(self) -> str:
        """The bundle's digest (what the device reports once it runs this config)."""
        return self.bundle.digest


class ConfigRenderer:
    """Renders devices' config bundles from one loaded operator repo and a secrets source."""

    def __init__(self, repo: _Repo, secrets: Secrets) -> None:
        self.repo = repo
        self.secrets = secrets
        # Sandboxed: templates are text from a pull request (see inventory.loader).
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(repo.root)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )

    def manages(self, version: Version) -> bool:
        """True when release ``version`` declares config files or flags."""
        release = self.repo.releases.get(version)
        return release is not None and bool(release.manifest.config or release.manifest.flags)

    def render(self, device_id: str, version: Version) -> RenderedConfig | None:
        """``device_id``'s config under release ``version`` (None: the release manages none).

        Raises ConfigRenderError naming the device and the template's line.
        """
        release: _Release | None = self.repo.releases.get(version)
        if release is None:
            return None
        manifest = release.manifest
        if not manifest.config and not manifest.flags:
            return None
        inventory = self.repo.inventory
        device = inventory.devices[device_id]
        group_name = self.repo.assignment.get(device_id)
        group = inventory.groups.get(group_name) if group_name is not None else None
        flags = effective_flags(wanted_flags(device, group), manifest.flags)
        variables = {**(group.vars if group is not None else {}), **device.vars}
        context = {
            "device": _device_view(device_id, device),
            "group": group_name,
            "vars": variables,
            "flags": flags,
            "release": str(manifest.version),
        }
        secrets = self.secrets.for_device(device_id)
        files: list[RenderedFile] = []
        masked: dict[str, str] = {}
        for spec in manifest.config:
            real = self._render(spec, device_id, context, _declared(spec, secrets, device_id))
            shown = self._render(spec, device_id, context, dict.fromkeys(spec.secrets, MASK))
            for value in secrets.values():  # a secret copied into a variable stays hidden too
                if value and value in shown:
                    shown = shown.replace(value, MASK)
            data = real.encode()
            files.append(
                RenderedFile.model_construct(
                    path=spec.path,
                    mode=spec.mode,
                    sha256=hashlib.sha256(data).hexdigest(),
                    content=real,
                    mac=self._mac(spec, device_id, data),
                )
            )
            masked[spec.path] = shown
        digest = config_digest(((f.path, f.mode, f.digest_entry) for f in files), flags)
        bundle = ConfigBundle.model_construct(digest=digest, files=files, flags=flags)
        return RenderedConfig(bundle, masked)

    def _mac(self, spec: ConfigFileSpec, device_id: str, data: bytes) -> str | None:
        """The keyed digest of a file that declares secrets (None for one that does not)."""
        if not spec.secrets:
            return None
        try:
            return self.secrets.mac(data, needed_by=f"device {device_id}: {spec.path}")
        except SecretsError as e:
            raise ConfigRenderError(str(e)) from None

    def _render(
        self, spec: ConfigFileSpec, device_id: str, context: dict[str, Any], secrets: Any
    ) -> str:
        try:
            template = self.env.get_template(spec.template)
            return template.render({**context, "secrets": secrets})
        except jinja2.TemplateSyntaxError as e:
            raise ConfigRenderError(
                f"device {device_id}: {spec.template}:{e.lineno}: Jinja2: {e.message}"
            ) from None
        except jinja2.TemplateNotFound:
            raise ConfigRenderError(
                f"device {device_id}: template {spec.template!r} does not exist"
            ) from None
        except Exception as e:  # template code's own errors (undefined name, division by zero)
            line = _line_in(e, self.repo.root / spec.template)
            where = f"{spec.template}:{line}" if line is not None else spec.template
            raise ConfigRenderError(
                f"device {device_id}: {where}: Jinja2: {type(e).__name__}: {e}"
            ) from None


def _declared(spec: ConfigFileSpec, secrets: dict[str, str], device_id: str) -> dict[str, str]:
    missing = [name for name in spec.secrets if name not in secrets]
    if missing:
        raise ConfigRenderError(
            f"device {device_id}: {spec.path} needs secret(s) {', '.join(missing)}, "
            "which the secrets file does not define (engine.yaml secrets_file or "
            "$ENGINE_SECRETS_FILE)"
        )
    return {name: secrets[name] for name in spec.secrets}


def _device_view(device_id: str, device: Device) -> dict[str, Any]:
    return {
        "id": device_id,
        "platform": device.platform.value,
        "site": device.site,
        "tags": list(device.tags),
        "labels": dict(device.labels),
    }


def _line_in(error: BaseException, path: Path) -> int | None:
    import traceback

    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line
