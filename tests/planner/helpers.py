"""Builders of in-memory operator repos for planner tests (no files, no store)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory.channels import Resolution
from inventory.models import Inventory
from states.manifest import ReleaseManifest
from states.report import Report

ROOT = Path("/fleet")


@dataclass(frozen=True)
class FakeRelease:
    """Stands in for inventory.loader.LoadedRelease."""

    manifest: ReleaseManifest
    path: Path
    sha256: str
    signature_path: Path | None = None


@dataclass(frozen=True)
class FakeRepo:
    """Stands in for inventory.loader.OperatorRepo: just what the planner reads."""

    inventory: Inventory
    assignment: dict[str, str]
    releases: dict[Version, FakeRelease]
    root: Path = ROOT
    digest: str = "d" * 64
    extra: dict[str, Any] = field(default_factory=dict)
    resolutions: dict[str, Resolution] = field(default_factory=dict)


def make_release(
    version: str,
    platforms: list[str] | None = None,
    *,
    rollback_to: list[str] | None = None,
    serial: int | None = None,
    files: int = 3,
    requires: Mapping[str, Any] | None = None,
) -> FakeRelease:
    """A release manifest with ``files`` small files on each of ``platforms``."""
    names = platforms if platforms is not None else [p.value for p in Platform]
    body = {
        "version": version,
        "serial": serial if serial is not None else int(version.replace(".", "").ljust(3, "0")),
        "expires": "2030-01-01T00:00:00Z",
        "platforms": {
            p: {
                "files": [
                    {
                        "path": f"core/file{i}.py",
                        "sha256": "a" * 64,
                        "size": 4096 + 123 * i,
                        "source": f"{version}/{p}/file{i}.py",
                    }
                    for i in range(files)
                ]
            }
            for p in names
        },
        "health_check": {"kind": "heartbeat_file", "path": "heartbeat.json", "timeout": "60s"},
        "rollback_to": rollback_to or [],
    }
    if requires is not None:
        body["requires"] = dict(requires)
    manifest = ReleaseManifest.model_validate(body)
    return FakeRelease(
        manifest=manifest,
        path=ROOT / "releases" / f"{version}.yaml",
        sha256=f"{version}".ljust(64, "0")[:64],
        signature_path=ROOT / "releases" / f"{version}.yaml.sig",
    )


def assign(inventory: Inventory) -> dict[str, str]:
    """The winning group of each device, by the inventory package's own rules."""
    from inventory.membership import assign_groups

    assignment, _conflicts = assign_groups(inventory)
    return dict(assignment)


def make_repo(
    inventory: Mapping[str, Any] | Inventory,
    releases: Mapping[str, Mapping[str, Any]] | None = None,
) -> FakeRepo:
    """An in-memory repo from inventory data and ``{version: {platforms, rollback_to}}``."""
    inv = inventory if isinstance(inventory, Inventory) else Inventory.model_validate(inventory)
    rel = releases if releases is not None else {"3.0.0": {}, "3.0.1": {}}
    loaded = {Version(v): make_release(v, **dict(spec)) for v, spec in rel.items()}
    return FakeRepo(inventory=inv, assignment=assign(inv), releases=loaded)


def make_reports(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Report]:
    """Reports keyed by device from ``{device: {agent_version, platform, last_seen}}``."""
    return {
        device: Report.model_validate({"device": device, **dict(body)})
        for device, body in data.items()
    }


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
