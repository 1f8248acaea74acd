"""The legacy in-place layout: the agent's files directly in the agent root (field installs).

Backup copies every path the swap will touch to ``backup/<old version>/``
(fsynced, with an index of which paths existed). The swap renames staged
files in one by one; before each rename the path is recorded in the journal,
so rollback restores exactly the touched paths: from the backup when they
existed before, by deleting them when they did not.

Every file operation in the agent root goes through ``agent_runtime._nofollow``:
no symbolic link inside the root is followed (the agent's user may plant one),
and a staged file on another file system is copied beside its target and
renamed in. Copies are written as ``.<name>.tmp-<pid>`` first; what a killed
run left is removed by ``clear_temporaries`` (on recovery and when the journal
closes) and by the rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent_runtime import faults
from agent_runtime._fsutil import atomic_write_bytes, fsync_dir, remove_tree
from agent_runtime._nofollow import Entry, RootDir, check_no_links
from agent_runtime.errors import LayoutError
from agent_runtime.layouts.base import RecordTouch, SwapPlan
from fleetbase.version import Version
from states.manifest import FileEntry

__all__ = ["BACKUP_DIR", "InPlaceLayout"]

BACKUP_DIR = "backup"
ASIDE_SUFFIX = ".old"
#: Names in the agent root that belong to the runtime or the agent's own output, not a release.
NOT_RELEASE = frozenset({BACKUP_DIR, "heartbeat.json", "__pycache__"})


def _backup_name(version: Version | None) -> str:
    return str(version) if version is not None else "_none"


class InPlaceLayout:
    """Files live in ``root``; backups in ``root/backup/<version>/``."""

    name = "in_place"

    def __init__(self, root: Path, *, rename_aside: bool | None = None) -> None:
        self.root = root
        self.rename_aside = sys.platform == "win32" if rename_aside is None else rename_aside

    # -- queries ----------------------------------------------------------------------

    def active_dir(self, version: Version) -> Path:
        """The agent root: every version runs there."""
        return self.root

    def installed_path(self, version: Version, entry: FileEntry) -> Path:
        """``root/<path>``."""
        return self.root / entry.path

    def has_files(self) -> bool:
        """True when the agent root holds anything besides runtime leftovers."""
        if not self.root.is_dir():
            return False
        return any(
            p.name not in NOT_RELEASE and not p.name.startswith(".") for p in self.root.iterdir()
        )

    def backup_dir(self, version: Version | None) -> Path:
        """``root/backup/<version>``."""
        return self.root / BACKUP_DIR / _backup_name(version)

    def restore_source(self, version: Version) -> Path | None:
        """``backup/<version>/files`` when a complete backup of that version exists."""
        d = self.backup_dir(version)
        return d / "files" if (d / "index.json").is_file() else None

    # -- transaction steps ------------------------------------------------------------

    def _touched(self, plan: SwapPlan) -> list[str]:
        paths = {e.path for e in plan.new_files}
        if plan.old_files is not None:
            paths |= {e.path for e in plan.old_files}
        return sorted(paths)

    def backup(self, plan: SwapPlan) -> None:
        """Copy every path the swap may touch to ``backup/<old>/`` with an index, atomically.

        Raises LinkRefusedError when ``backup`` or any touched path is a symbolic link:
        refused before the swap, so nothing in the agent root has changed.
        """
        check_no_links(self.root, BACKUP_DIR)
        final = self.backup_dir(plan.old)
        parent = final.parent
        tmp = parent / f".{final.name}.tmp-{plan.txid}"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        present: dict[str, int] = {}
        absent: list[str] = []
        agent_root, copies = RootDir(self.root), RootDir(tmp)
        for rel in self._touched(plan):
            with agent_root.entry(rel) as src:
                if src is None or not src.is_file():
                    absent.append(rel)
                    continue
                fd = src.open_read()
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            with copies.entry(f"files/{rel}", create=True) as dest:
                assert dest is not None
                dest.copy_from(fd, mode)
            present[rel] = mode
        index = {
            "txid": plan.txid,
            "version": None if plan.old is None else str(plan.old),
            "created": datetime.now(UTC).isoformat(),
            "present": present,
            "absent": absent,
        }
        atomic_write_bytes(tmp / "index.json", json.dumps(index, indent=1).encode())
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():
            aside = parent / f".{final.name}.old-{plan.txid}"
            remove_tree(aside)
            os.replace(final, aside)
            os.replace(tmp, final)
            remove_tree(aside)
        else:
            os.replace(tmp, final)
        fsync_dir(parent)

    def _index(self, plan: SwapPlan) -> dict[str, object]:
        path = self.backup_dir(plan.old) / "index.json"
        try:
            index: dict[str, object] = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise LayoutError(f"{path}: backup index unreadable: {e}") from e
        if index.get("txid") != plan.txid:
            raise LayoutError(
                f"{path}: backup belongs to transaction {index.get('txid')}, not {plan.txid}"
            )
        return index

    @staticmethod
    def _put_aside(target: Entry) -> None:
        aside = target.name + ASIDE_SUFFIX
        target.unlink(aside)
        target.rename(aside)

    def swap(self, plan: SwapPlan, record: RecordTouch) -> None:
        """Rename the staged files in one by one; remove files the new release drops.

        Staged files on another file system than the agent root are copied beside
        their target and renamed in. No symbolic link inside the agent root is followed.
        """
        new_paths = {e.path for e in plan.new_files}
        removed = (
            []
            if plan.old_files is None
            else sorted(e.path for e in plan.old_files if e.path not in new_paths)
        )
        ops: list[tuple[str, FileEntry | None]] = [(e.path, e) for e in plan.new_files]
        ops += [(p, None) for p in removed]
        root = RootDir(self.root)
        for n, (rel, entry) in enumerate(ops, start=1):
            record(rel)
            with root.entry(rel, create=entry is not None) as target:
                if target is not None:
                    present = target.lstat() is not None
                    if entry is not None:
                        staged = plan.staged(entry)
                        if os.name == "posix":
                            os.chmod(staged, entry.mode)
                        if self.rename_aside and present:
                            self._put_aside(target)
                        target.replace_with(staged)
                    elif present:
                        if self.rename_aside:
                            self._put_aside(target)
                        else:
                            target.unlink()
                    target.sync()
            faults.hit(f"swap.file:{n}")

    def rollback(self, plan: SwapPlan, touched: Sequence[str]) -> None:
        """Restore every touched path from the backup (or remove it if it did not exist);
        temporary copies a killed earlier attempt left are removed first."""
        if not touched:
            return
        index = self._index(plan)
        present = index.get("present")
        if not isinstance(present, dict):
            raise LayoutError("backup index has no 'present' mapping")
        root, files = RootDir(self.root), RootDir(self.backup_dir(plan.old) / "files")
        for n, rel in enumerate(touched, start=1):
            with root.entry(rel, create=rel in present) as target:
                if target is None:
                    continue
                for name in target.temporaries():
                    target.unlink(name)
                if rel in present:
                    if self.rename_aside and target.lstat() is not None:
                        self._put_aside(target)
                    with files.entry(rel) as copy:
                        if copy is None:
                            raise LayoutError(f"{self.backup_dir(plan.old)}: {rel} is missing")
                        fd = copy.open_read()
                    target.copy_from(
                        fd, int(present[rel]), before_rename=_fault(f"rollback.file:{n}")
                    )
                else:
                    target.unlink()
                    target.sync()

    def clear_temporaries(self, plan: SwapPlan) -> None:
        """Remove temporary copies (``.<name>.tmp-<pid>``) that killed runs left beside the
        paths this transaction touches, and its interrupted backup directories."""
        root = RootDir(self.root)
        for rel in self._touched(plan):
            with root.entry(rel) as target:
                if target is not None:
                    for name in target.temporaries():
                        target.unlink(name)
        if _is_dir(self.root / BACKUP_DIR):
            name = self.backup_dir(plan.old).name
            for left in (f".{name}.tmp-{plan.txid}", f".{name}.old-{plan.txid}"):
                remove_tree(self.root / BACKUP_DIR / left)

    def _drop_aside(self, plan: SwapPlan) -> None:
        root = RootDir(self.root)
        for rel in self._touched(plan):
            with contextlib.suppress(OSError), root.entry(rel) as target:
                if target is not None:  # Windows: may still be locked; next time then
                    target.unlink(target.name + ASIDE_SUFFIX)

    def finish(self, plan: SwapPlan, keep: set[Version], cutoff: datetime) -> None:
        """Remove ``.old`` files and backups older than ``cutoff`` whose version is not kept."""
        self._drop_aside(plan)
        keep_names = {_backup_name(v) for v in keep}
        base = self.root / BACKUP_DIR
        if not _is_dir(base):  # absent, or a link the runtime does not follow
            return
        for d in base.iterdir():
            if d.name.startswith("."):
                remove_tree(d)  # leftovers of interrupted backups
                continue
            if d.name in keep_names:
                continue
            try:
                created = datetime.fromisoformat(
                    json.loads((d / "index.json").read_bytes())["created"]
                )
            except (OSError, ValueError, KeyError, TypeError):
                created = datetime.fromtimestamp(d.stat().st_mtime, UTC)
            if created < cutoff:
                remove_tree(d)

    def discard(self, plan: SwapPlan) -> None:
        """After a rollback: remove ``.old`` files left by the rename-aside swap."""
        self._drop_aside(plan)


def _is_dir(path: Path) -> bool:
    """True for a real directory (a symbolic link to one is not)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _fault(point: str) -> Callable[[], None]:
    return lambda: faults.hit(point)
