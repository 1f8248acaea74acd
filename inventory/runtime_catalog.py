"""Runtime releases in the operator repo: ``runtime-releases/<version>/<target>/``.

What groups' ``runtime: {release: V}`` may name; ``engine runtime release``
makes them (``engine.runtime_releases``), `engine serve` serves them. Read
here so that the loader can check the groups' references with file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetbase.version import Version, VersionError
from inventory._checks import Origin
from inventory.errors import Problem
from inventory.models import Inventory
from inventory.sources import SourceFile
from states.bundle import MANIFEST_NAME, TARGET_RE

__all__ = [
    "RUNTIME_RELEASES_DIR",
    "RuntimeRelease",
    "check_runtime_releases",
    "list_runtime_releases",
    "runtime_release_sources",
    "runtime_releases_dir",
]

#: Where runtime releases live, relative to the operator repo.
RUNTIME_RELEASES_DIR = "runtime-releases"


@dataclass(frozen=True)
class RuntimeRelease:
    """One runtime release: its version and the targets it has a bundle for."""

    version: Version
    directory: Path
    targets: tuple[str, ...]


def runtime_releases_dir(root: Path) -> Path:
    """The runtime releases directory of the operator repo at ``root``."""
    return root / RUNTIME_RELEASES_DIR


def list_runtime_releases(root: Path) -> dict[Version, RuntimeRelease]:
    """The runtime releases under the operator repo ``root`` (none when the directory is
    missing); a directory not named like a version, or without any bundle, is left out."""
    base = runtime_releases_dir(root)
    found: dict[Version, RuntimeRelease] = {}
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            version = Version(entry.name)
        except VersionError:
            continue
        targets = tuple(
            sorted(
                t.name
                for t in entry.iterdir()
                if TARGET_RE.match(t.name) and (t / "bundle.json").is_file()
            )
        )
        if targets:
            found[version] = RuntimeRelease(version, entry, targets)
    return found


def runtime_release_sources(root: Path) -> list[SourceFile]:
    """The ``bundle.json`` of every runtime release's every target: inputs of the repo digest.

    A saved plan is bound to them (ADR 0015): a runtime release or a target
    added, replaced or removed after ``engine plan --out`` stales the plan. Each
    ``bundle.json`` lists its wheels' sha256, so the wheels themselves need not
    be read; signatures are not inputs (re-signing does not stale a plan).
    """
    return [
        SourceFile.read(release.directory / target / MANIFEST_NAME, root)
        for release in list_runtime_releases(root).values()
        for target in release.targets
    ]


def check_runtime_releases(
    inventory: Inventory, origin: Origin, root: Path, problems: list[Problem]
) -> None:
    """Each group's ``runtime.release`` names a runtime release under runtime-releases/."""
    wanted = [(n, g.runtime.release) for n, g in inventory.groups.items() if g.runtime]
    if not wanted:
        return
    found = list_runtime_releases(root)
    known = ", ".join(str(v) for v in sorted(found)) or f"none ({RUNTIME_RELEASES_DIR}/ is empty)"
    for name, release in wanted:
        if release not in found:
            problems.append(
                origin.group[name].problem(
                    ("groups", name, "runtime", "release"),
                    f"runtime release {release} is not in {RUNTIME_RELEASES_DIR}/ (known: "
                    f"{known}); make it with `engine runtime release`",
                    at_value=True,
                )
            )
