"""Helpers to write small operator repos on disk for the inventory tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

SHA = "a" * 64


def manifest_text(version: str, serial: int, *, extra: str = "", files: str | None = None) -> str:
    """A valid release manifest as YAML text (``files`` replaces the linux file list)."""
    body = (
        files
        if files is not None
        else (
            f"      - {{path: agent.py, sha256: '{SHA}', size: 10, source: {version}/agent.py}}\n"
        )
    )
    return (
        f"version: '{version}'\n"
        f"serial: {serial}\n"
        "expires: '2036-01-01T00:00:00Z'\n"
        "platforms:\n"
        "  linux:\n"
        "    files:\n"
        f"{body}"
        f"{extra}"
    )


DEVICES = """\
devices:
  berlin-pos-0001:
    platform: windows
    site: berlin
    tags: [internal]
    labels: {customer: acme}
  hamburg-srv-0002:
    platform: linux
    site: hamburg
    pin: '3.0.1'
  munich-mac-0003:
    platform: macos
    site: munich
"""

GROUPS = """\
groups:
  canary:
    match: {tags: internal}
    priority: 100
    agent: {release: '3.0.2'}
  linux-prod:
    match: {platform: linux}
    members: [munich-mac-0003]
    agent: {release: '3.0.1'}
  everyone:
    match: {platform: [windows, linux, macos]}
    description: display only
"""

#: a windows section for ``manifest_text(..., extra=...)``
WINDOWS_FILES = (
    "  windows:\n"
    "    files:\n"
    f"      - {{{{path: agent.py, sha256: '{SHA}', size: 10, source: {{version}}/agent.py}}}}\n"
)

BASE: dict[str, str] = {
    "inventory/devices.yaml": DEVICES,
    "inventory/groups.yaml": GROUPS,
    "releases/3.0.1.yaml": manifest_text("3.0.1", 1),
    # the canary group holds a windows device: 3.0.2 must have windows files too
    "releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra=WINDOWS_FILES.format(version="3.0.2")),
}

RepoMaker = Callable[..., Path]


def write_repo(root: Path, files: Mapping[str, str | None]) -> Path:
    """Write ``files`` (relative path -> text; None deletes) under ``root``."""
    for rel, text in files.items():
        path = root / rel
        if text is None:
            if path.exists():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text.startswith("\n") else text)
    return root


@pytest.fixture
def make_repo(tmp_path: Path) -> RepoMaker:
    """Write the base repo plus overrides (None removes a base file); return its root."""

    def make(overrides: Mapping[str, str | None] | None = None, *, base: bool = True) -> Path:
        files: dict[str, str | None] = dict(BASE) if base else {}
        files.update(overrides or {})
        root = tmp_path / "fleet"
        root.mkdir(exist_ok=True)
        return write_repo(root, files)

    return make
