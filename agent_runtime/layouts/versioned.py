"""The versioned layout: ``<root>/releases/<version>/`` plus one ``current`` pointer.

The pointer is a symlink replaced atomically (POSIX) or, where symlinks are
unavailable (Windows), a file ``current.txt`` naming the version, written
atomically. The installed release's directory is never modified, so it is
its own backup.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from agent_runtime import faults
from agent_runtime._fsutil import atomic_write_bytes, fsync_dir, move_durable, remove_tree
from agent_runtime._nofollow import RootDir, check_no_links
from agent_runtime.errors import LayoutError
from agent_runtime.layouts.base import RecordTouch, SwapPlan
from fleetbase.version import Version, VersionError
from states.manifest import FileEntry

__all__ = ["POINTER_FILE", "RELEASES_DIR", "SYMLINK", "VersionedLayout"]

RELEASES_DIR = "releases"
SYMLINK = "current"
POINTER_FILE = "current.txt"


class VersionedLayout:
    """Releases side by side; switching is one atomic pointer update."""

    name = "versioned"

    def __init__(self, root: Path, *, pointer: Literal["auto", "symlink", "file"] = "auto") -> None:
        self.root = root
        if pointer == "auto":
            pointer = "file" if sys.platform == "win32" else "symlink"
        self.pointer: Literal["symlink", "file"] = pointer
        self.releases = root / RELEASES_DIR

    # -- pointer ------------------------------------------------------------------------

    def current_version(self) -> Version | None:
        """The version the pointer names, or None when there is none."""
        try:
            if self.pointer == "symlink":
                text = Path(os.readlink(self.root / SYMLINK)).name
            else:
                text = (self.root / POINTER_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        try:
            return Version(text)
        except VersionError:
            return None

    def _point_to(self, version: Version | None) -> None:
        if self.pointer == "symlink":
            link = self.root / SYMLINK
            if version is None:
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
            else:
                tmp = self.root / f".{SYMLINK}.tmp-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(f"{RELEASES_DIR}/{version}", tmp, target_is_directory=True)
                os.replace(tmp, link)
        elif version is None:
            with contextlib.suppress(FileNotFoundError):
                (self.root / POINTER_FILE).unlink()
        else:
            atomic_write_bytes(self.root / POINTER_FILE, f"{version}\n".encode())
        fsync_dir(self.root)

    # -- queries ------------------------------------------------------------------------

    def active_dir(self, version: Version) -> Path:
        """``root/current`` (symlink) or ``root/releases/<version>`` (pointer file)."""
        if self.pointer == "symlink":
            return self.root / SYMLINK
        return self.releases / str(version)

    def installed_path(self, version: Version, entry: FileEntry) -> Path:
        """``root/releases/<version>/<path>``."""
        return self.releases / str(version) / entry.path

    def has_files(self) -> bool:
        """True when a pointer names an existing release directory."""
        v = self.current_version()
        return v is not None and (self.releases / str(v)).is_dir()

    def restore_source(self, version: Version) -> Path | None:
        """``releases/<version>`` when it is still kept."""
        d = self.releases / str(version)
        return d if d.is_dir() else None

    # -- transaction steps --------------------------------------------------------------

    def _replaced(self, plan: SwapPlan) -> Path:
        return self.releases / f".{plan.new}.replaced-{plan.txid}"

    def _tmp(self, plan: SwapPlan) -> Path:
        return self.releases / f".{plan.new}.tmp-{plan.txid}"

    def _check_links(self, plan: SwapPlan) -> None:
        """LinkRefusedError when ``releases`` or the target's directory is a symbolic link."""
        check_no_links(self.root, f"{RELEASES_DIR}/{plan.new}")

    def backup(self, plan: SwapPlan) -> None:
        """Nothing to copy: check that the installed release's directory is intact (and that
        no symbolic link stands where the swap will write)."""
        self._check_links(plan)
        old_dir = self.releases / str(plan.old)
        if plan.old is not None and self.current_version() is not None and not old_dir.is_dir():
            raise LayoutError(
                f"{old_dir}: the installed release's directory is missing; "
                "cannot keep it restorable"
            )

    def swap(self, plan: SwapPlan, record: RecordTouch) -> None:
        """Move the staged files into ``releases/<new>``, then flip the pointer."""
        self._check_links(plan)
        record(f"{RELEASES_DIR}/{plan.new}")
        tmp = self._tmp(plan)
        remove_tree(tmp)
        for entry in plan.new_files:
            staged = plan.staged(entry)
            if os.name == "posix":
                os.chmod(staged, entry.mode)
            move_durable(staged, tmp / entry.path)
        fsync_dir(tmp)
        dest = self.releases / str(plan.new)
        if dest.exists():
            os.replace(dest, self._replaced(plan))
        os.replace(tmp, dest)
        fsync_dir(self.releases)
        faults.hit("swap.file:1")
        record(SYMLINK if self.pointer == "symlink" else POINTER_FILE)
        self._point_to(plan.new)
        faults.hit("swap.file:2")

    def rollback(self, plan: SwapPlan, touched: Sequence[str]) -> None:
        """Point back at the previous release; put back a directory the swap replaced."""
        self._point_to(plan.old)
        replaced = self._replaced(plan)
        dest = self.releases / str(plan.new)
        if replaced.exists():
            remove_tree(dest)
            os.replace(replaced, dest)
        elif plan.new != plan.old and touched:
            remove_tree(dest)
        remove_tree(self._tmp(plan))
        if self.releases.is_dir():
            fsync_dir(self.releases)

    def clear_temporaries(self, plan: SwapPlan) -> None:
        """Remove pointer temporaries (``.current.tmp-<pid>``) killed runs left in the root."""
        root = RootDir(self.root)
        for name in (SYMLINK, POINTER_FILE):
            with root.entry(name) as pointer:
                assert pointer is not None
                for left in pointer.temporaries():
                    pointer.unlink(left)

    def finish(self, plan: SwapPlan, keep: set[Version], cutoff: datetime) -> None:
        """Drop a replaced copy; prune release directories older than ``cutoff`` not kept."""
        remove_tree(self._replaced(plan))
        if not self.releases.is_dir():
            return
        keep_names = {str(v) for v in keep} | {str(plan.new)}
        for d in self.releases.iterdir():
            if d.name.startswith("."):
                remove_tree(d)
                continue
            if d.name in keep_names:
                continue
            if datetime.fromtimestamp(d.stat().st_mtime, UTC) < cutoff:
                remove_tree(d)

    def discard(self, plan: SwapPlan) -> None:
        """Nothing beyond what rollback did."""
