"""What a directory of runtime bundles offers: one summary per target, and its files.

Only what a bundle's ``bundle.json`` lists (and the manifest and its signature)
is ever handed out: a stray file in a bundle directory, a name with a path in
it, or a symlink leading out of the directory is not found.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from states.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    TARGET_RE,
    BundleError,
    BundleManifest,
    read_manifest,
)

__all__ = ["BundleSummary", "bundle_file", "list_bundles"]

log = logging.getLogger("engine.server")


@dataclass(frozen=True)
class BundleSummary:
    """One target's bundle as `GET /runtime/bundles` lists it."""

    target: str
    platform: str
    arch: str
    python: str
    runtime_version: str
    bundle_sha256: str
    signed: bool
    created: str

    def as_json(self) -> dict[str, object]:
        """The JSON object of this bundle."""
        return {
            "target": self.target,
            "platform": self.platform,
            "arch": self.arch,
            "python": self.python,
            "runtime_version": self.runtime_version,
            "bundle_sha256": self.bundle_sha256,
            "signed": self.signed,
            "created": self.created,
        }


def list_bundles(root: Path) -> list[BundleSummary]:
    """The bundles under ``root``, by target name; a directory without a readable, valid
    ``bundle.json`` for its own target is left out (and logged)."""
    try:
        candidates = sorted(p for p in root.iterdir() if TARGET_RE.match(p.name))
    except OSError:
        return []
    out = []
    for directory in candidates:
        read = _manifest(directory)
        if read is None:
            continue
        data, manifest = read
        out.append(
            BundleSummary(
                target=manifest.target,
                platform=manifest.platform,
                arch=manifest.arch,
                python=manifest.python,
                runtime_version=manifest.runtime_version,
                bundle_sha256=hashlib.sha256(data).hexdigest(),
                signed=(directory / SIGNATURE_NAME).is_file(),
                created=manifest.created.isoformat(),
            )
        )
    return out


def bundle_file(root: Path, target: str, name: str) -> tuple[Path, str | None] | None:
    """The file ``name`` of ``target``'s bundle and its sha256 when the manifest lists one;
    None for an unknown target, a file the bundle does not list, or a path leaving it."""
    if not TARGET_RE.match(target) or "/" in name or "\\" in name:
        return None
    directory = root / target
    read = _manifest(directory)
    if read is None:
        return None
    data, manifest = read
    if name == MANIFEST_NAME:
        sha256: str | None = hashlib.sha256(data).hexdigest()
    elif name == SIGNATURE_NAME:
        sha256 = None
    else:
        sha256 = next((f.sha256 for f in manifest.files if f.name == name), None)
        if sha256 is None:
            return None
    path = directory / name
    try:
        inside = path.resolve(strict=True).parent == directory.resolve(strict=True)
    except OSError:
        return None
    return (path, sha256) if inside and path.is_file() else None


def _manifest(directory: Path) -> tuple[bytes, BundleManifest] | None:
    """``bundle.json``'s bytes and model, when it is there, valid and for this directory."""
    try:
        data = (directory / MANIFEST_NAME).read_bytes()
    except OSError:
        return None
    try:
        manifest = read_manifest(data, str(directory / MANIFEST_NAME))
    except BundleError as e:
        log.warning("runtime bundle not served: %s", e)
        return None
    if manifest.target != directory.name:
        log.warning(
            "runtime bundle not served: %s is for %s", directory / MANIFEST_NAME, manifest.target
        )
        return None
    return data, manifest
