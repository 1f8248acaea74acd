"""The plan's view of managed config: each device's desired digest, and the masked diffs.

Each (device, release) is rendered once per plan. The masked files of every
digest rendered are kept under ``.engine/config-renders/`` of the operator
repo (secrets masked, so nothing secret is written): ``engine plan --diff``
compares a device's desired files with those of the digest it reports.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from engine.secrets_file import load_secrets
from fleetbase.version import Version
from inventory.loader import OperatorRepo
from states.config_bundle import FLAGS_FILE, flags_bytes
from states.plan import CHANGING_ACTIONS, Plan
from states.report import Report

if TYPE_CHECKING:  # Jinja2 is imported only when some release manages config
    from engine.config_render import ConfigRenderer, RenderedConfig

__all__ = ["RENDERS_DIR", "CachingRenderer", "config_renderer", "with_diffs"]

#: Where masked renderings are kept, relative to the operator repo.
RENDERS_DIR = Path(".engine") / "config-renders"


def _key(digest: str) -> str:
    return digest.replace(":", "-")


class CachingRenderer:
    """Renders each (device, release) once; keeps masked renderings by digest for diffs."""

    def __init__(self, renderer: ConfigRenderer, keep: Path | None) -> None:
        self.renderer = renderer
        self.keep = keep
        self.rendered: dict[tuple[str, str], RenderedConfig | None] = {}

    def get(self, device: str, version: Version) -> RenderedConfig | None:
        """The device's config under ``version`` (ConfigRenderError when it cannot render)."""
        key = (device, str(version))
        if key not in self.rendered:
            rendered = self.rendered[key] = self.renderer.render(device, version)
            if rendered is not None:
                self._keep(rendered)
        return self.rendered[key]

    def digest(self, device: str, version: Version) -> str | None:
        """The device's desired config digest under ``version`` (None: not managed)."""
        rendered = self.get(device, version)
        return None if rendered is None else rendered.digest

    def masked_files(self, digest: str | None) -> dict[str, str]:
        """The masked files (flags.json included) of a digest rendered before ({}: unknown)."""
        if digest is None or self.keep is None:
            return {}
        try:
            data = json.loads((self.keep / f"{_key(digest)}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _keep(self, rendered: RenderedConfig) -> None:
        if self.keep is None:
            return
        path = self.keep / f"{_key(rendered.digest)}.json"
        if path.exists():
            return
        files = {**rendered.masked, FLAGS_FILE: flags_bytes(rendered.bundle.flags).decode()}
        try:
            self.keep.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(files, sort_keys=True), encoding="utf-8")
        except OSError:
            pass  # only diffs need it: a read-only checkout plans without them


def config_renderer(repo: OperatorRepo) -> CachingRenderer | None:
    """A renderer for ``repo`` when some release manages config or flags, else None.

    Raises SecretsError when the configured secrets file cannot be used.
    """
    if not any(r.manifest.config or r.manifest.flags for r in repo.releases.values()):
        return None
    from engine.config_render import ConfigRenderer

    secrets = load_secrets(repo.root, repo.settings.secrets_file)
    return CachingRenderer(ConfigRenderer(repo, secrets), repo.root / RENDERS_DIR)


def _diff(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, ""), new.get(path, "")
        if before == after:
            continue
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{path}" if path in old else "/dev/null",
            tofile=f"b/{path}" if path in new else "/dev/null",
        )
        out[path] = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out


def with_diffs(plan: Plan, renderer: CachingRenderer, reports: Mapping[str, Report]) -> Plan:
    """``plan`` with each changing device's config diff (masked) against what it reports."""
    devices = []
    for d in plan.devices:
        if d.config_digest is None or d.desired is None or d.action not in CHANGING_ACTIONS:
            devices.append(d)
            continue
        rendered = renderer.get(d.device, d.desired)
        if rendered is None:
            devices.append(d)
            continue
        new = {**rendered.masked, FLAGS_FILE: flags_bytes(rendered.bundle.flags).decode()}
        report = reports.get(d.device)
        old = renderer.masked_files(report.config_digest if report is not None else None)
        devices.append(d.model_copy(update={"config_diff": _diff(old, new)}))
    return plan.model_copy(update={"devices": devices})
