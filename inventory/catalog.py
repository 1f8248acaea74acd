"""The release catalog: every releases/<version>.yaml of the operator repo, validated.

Checks beyond the manifest model: the version inside a file matches its file
name, and no two manifests share a version or a serial.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from fleetbase.version import Version, VersionError
from inventory.errors import InventoryError, Problem
from inventory.sources import SourceFile, problems_from_validation_error
from states.manifest import ReleaseManifest

__all__ = [
    "RELEASES_DIR",
    "LoadedRelease",
    "ReleaseCatalog",
    "load_manifest",
    "load_release",
    "load_release_catalog",
]

RELEASES_DIR = "releases"
_SUFFIX = ".yaml"


@dataclass(frozen=True)
class LoadedRelease:
    """A release manifest as read from releases/<version>.yaml."""

    manifest: ReleaseManifest
    path: Path
    sha256: str  # of the manifest file's bytes
    signature_path: Path | None  # <file>.sig when it exists


@dataclass
class ReleaseCatalog:
    """Releases by version, the problems found, and the files read."""

    releases: dict[Version, LoadedRelease] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    sources: list[SourceFile] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # file name versions that did not load


def load_release_catalog(root: Path) -> ReleaseCatalog:
    """Read and validate every ``releases/*.yaml`` under ``root`` (none if the dir is absent)."""
    catalog = ReleaseCatalog()
    directory = root / RELEASES_DIR
    if not directory.is_dir():
        return catalog
    by_serial: dict[int, SourceFile] = {}
    by_version: dict[Version, SourceFile] = {}
    for path in sorted(p for p in directory.glob(f"*{_SUFFIX}") if p.is_file()):
        source = SourceFile.read(path, root)
        catalog.sources.append(source)
        loaded = _load_one(source, catalog.problems)
        if loaded is None:
            catalog.failed.add(path.name.removesuffix(_SUFFIX))
            continue
        manifest = loaded.manifest
        other = by_version.get(manifest.version)
        if other is not None:
            catalog.problems.append(
                source.problem(
                    ("version",),
                    f"version {manifest.version} is also released by {other.where(('version',))}",
                    at_value=True,
                )
            )
            continue
        other = by_serial.get(manifest.serial)
        if other is not None:
            catalog.problems.append(
                source.problem(
                    ("serial",),
                    f"serial {manifest.serial} is also used by {other.where(('serial',))}; "
                    "every release needs its own, higher serial",
                    at_value=True,
                )
            )
            catalog.failed.add(str(manifest.version))
            continue
        by_version[manifest.version] = source
        by_serial[manifest.serial] = source
        catalog.releases[manifest.version] = loaded
    return catalog


def load_release(path: Path, root: Path | None = None) -> LoadedRelease:
    """Load one manifest file; raise InventoryError with its problems.

    The file name must be ``<version>.yaml`` matching the version inside.
    """
    source = SourceFile.read(path, root or path.parent.parent)
    problems: list[Problem] = []
    loaded = _load_one(source, problems)
    if loaded is None:
        raise InventoryError(problems)
    return loaded


def load_manifest(path: Path) -> tuple[bytes, ReleaseManifest]:
    """Read and validate one release manifest anywhere (its bytes and model), e.g. to sign it.

    Raises InventoryError naming file (relative to the current directory), line and key.
    """
    try:
        source = SourceFile.read(path, Path.cwd())
    except OSError as e:
        raise InventoryError([Problem(path, None, None, "", f"cannot read: {e.strerror}")]) from e
    data, problems = source.parse()
    if problems:
        raise InventoryError(problems)
    if not isinstance(data, dict):
        raise InventoryError([Problem(source.rel, 1, 1, "", "a release manifest is a mapping")])
    try:
        return source.data, ReleaseManifest.model_validate(data)
    except ValidationError as e:
        raise InventoryError(
            problems_from_validation_error(source, e, data, ReleaseManifest)
        ) from e


def _load_one(source: SourceFile, problems: list[Problem]) -> LoadedRelease | None:
    data, syntax = source.parse()
    if syntax:
        problems.extend(syntax)
        return None
    if not isinstance(data, dict):
        found = "nothing" if data is None else type(data).__name__
        problems.append(
            source.problem((), f"expected a release manifest (a mapping), found {found}")
        )
        return None
    try:
        manifest = ReleaseManifest.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation_error(source, e, data, ReleaseManifest))
        return None
    stem = source.path.name.removesuffix(_SUFFIX)
    try:
        named = Version(stem)
    except VersionError:
        problems.append(
            source.problem(
                (),
                f"file name {source.path.name!r} must be the release version: "
                f"releases/{manifest.version}{_SUFFIX}",
            )
        )
        return None
    if named != manifest.version or stem != str(manifest.version):
        problems.append(
            source.problem(
                ("version",),
                f"version {manifest.version} does not match the file name "
                f"{source.path.name!r}; rename it to {manifest.version}{_SUFFIX}",
                at_value=True,
            )
        )
        return None
    signature = source.path.with_name(source.path.name + ".sig")
    return LoadedRelease(
        manifest=manifest,
        path=source.path,
        sha256=hashlib.sha256(source.data).hexdigest(),
        signature_path=signature if signature.is_file() else None,
    )
