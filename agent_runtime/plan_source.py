"""Where the desired release comes from: the device's entry of a plan, and file locations.

A ``PlanSource`` supplies the device's entry of a plan: ``FilePlanSource``
reads a plan file written by ``engine plan --out``; pull mode's server
client implements the same protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from agent_runtime.errors import PlanError
from agent_runtime.fetch import is_url
from states.config_bundle import ConfigBundle
from states.keyring import KEYS_DOCUMENT
from states.manifest import FileEntry
from states.plan import DevicePlan, Plan, ReleaseRef

__all__ = [
    "DesiredRelease",
    "FilePlanSource",
    "PlanSource",
    "file_location",
    "resolve_location",
]


@dataclass(frozen=True)
class DesiredRelease:
    """The device's entry of a plan and where its desired release can be fetched."""

    device: DevicePlan
    release: ReleaseRef | None
    #: directory that relative local locations resolve against (plan.inventory.root)
    base: Path | None
    #: where the root-signed keys document and its signature are, when the source has one
    keys: tuple[str, str] | None = None
    #: the managed config files and flags to install with the release (server check-ins)
    config: ConfigBundle | None = None


class PlanSource(Protocol):
    """Supplies the device's current plan entry (a plan file, or later a server check-in)."""

    def fetch(self) -> DesiredRelease:
        """The device's plan entry; raises PlanError when there is none or it is unreadable."""
        ...


class FilePlanSource:
    """Reads a plan file (``engine plan --out``) afresh on every call."""

    def __init__(self, path: Path, device: str) -> None:
        self.path = path
        self.device = device

    def fetch(self) -> DesiredRelease:
        """The entry of this device; PlanError naming the file when absent or malformed."""
        try:
            plan = Plan.model_validate_json(self.path.read_bytes())
        except OSError as e:
            raise PlanError(f"{self.path}: cannot read the plan: {e.strerror or e}") from e
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise PlanError(f"{self.path}: not a plan: {loc}: {err['msg']}") from e
        entries = [d for d in plan.devices if d.device == self.device]
        if not entries:
            raise PlanError(f"{self.path}: the plan has no entry for device {self.device!r}")
        entry = entries[0]
        release = plan.releases.get(str(entry.desired)) if entry.desired is not None else None
        root = Path(plan.inventory.root)
        doc = root / "keys" / KEYS_DOCUMENT
        keys = (str(doc), f"{doc}.sig") if doc.is_file() else None
        return DesiredRelease(entry, release, root, keys)


def resolve_location(location: str, base: Path | None) -> str:
    """A plan's location: URLs and absolute paths as they are, others under ``base``."""
    if is_url(location) or os.path.isabs(location) or base is None:
        return location
    return str(base / location)


def file_location(ref: ReleaseRef, entry: FileEntry, base: Path | None) -> str:
    """Where to fetch ``entry``: ``artifacts + sha256`` by hash, else ``artifacts/source``."""
    if ref.artifacts_by_hash:
        root = resolve_location(ref.artifacts, base)
        if is_url(root):
            return root + entry.sha256
        return (
            str(Path(root) / entry.sha256) if root.endswith(("/", os.sep)) else root + entry.sha256
        )
    if is_url(entry.source):
        return entry.source
    root = resolve_location(ref.artifacts, base)
    return root.rstrip("/") + "/" + entry.source
