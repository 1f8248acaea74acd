"""The config templates releases declare: each must exist in the operator repo.

They are inputs of the plan like the inventory: read here so that the repo
digest (and a saved plan's drift check) changes when one of them does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fleetbase.version import Version
from inventory.catalog import LoadedRelease
from inventory.errors import Problem
from inventory.sources import SourceFile

__all__ = ["config_templates"]


def config_templates(
    root: Path, releases: Mapping[Version, LoadedRelease], problems: list[Problem]
) -> list[SourceFile]:
    """The template files every release's ``config`` names; a missing one is a problem."""
    found: dict[str, SourceFile] = {}
    for loaded in releases.values():
        for index, spec in enumerate(loaded.manifest.config):
            if spec.template in found:
                continue
            path = root / spec.template
            if not path.is_file():
                problems.append(
                    SourceFile.read(loaded.path, root).problem(
                        ("config", index, "template"),
                        f"template {spec.template!r} does not exist in the operator repo",
                        at_value=True,
                    )
                )
                continue
            found[spec.template] = SourceFile.read(path, root)
    return list(found.values())
