"""Which git commit an operator repo is at, and whether its files differ from it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GitInfo", "git_info"]

#: Paths inside the operator repo that never make it "dirty": the engine's own state.
_IGNORED = (".engine",)


@dataclass(frozen=True)
class GitInfo:
    """The commit checked out and whether the repo directory has uncommitted changes."""

    commit: str
    dirty: bool


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_info(root: Path) -> GitInfo | None:
    """Commit and dirty flag of ``root`` (only changes under ``root`` count), or None.

    None when git is not installed or ``root`` is not inside a git work tree.
    The engine's state directory ``.engine/`` is ignored when deciding dirtiness.
    """
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None
    pathspec = [".", *(f":(exclude){p}" for p in _IGNORED)]
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *pathspec)
    dirty = status is None or status.returncode != 0 or bool(status.stdout.strip())
    return GitInfo(commit=head.stdout.strip(), dirty=dirty)
