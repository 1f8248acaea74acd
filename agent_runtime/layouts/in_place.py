"""The legacy in-place layout: the agent's files directly in the agent root (field installs).

Backup copies every path the swap will touch to ``backup/<old version>/``
(fsynced, with an index of which paths existed). The swap renames staged
files in one by one; before each rename the path is recorded in the journal,
so rollback restores exactly the touched paths: from the backup when they
existed before, by deleting them when they did not.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent_runtime import faults
from agent_runtime._fsutil import atomic_write_bytes, copy_durable, fsync_dir, remove_tree
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
        """Copy every path the swap may touch to ``backup/<old>/`` with an index, atomically."""
        final = self.backup_dir(plan.old)
        parent = final.parent
        tmp = parent / f".{final.name}.tmp-{plan.txid}"
        remove_tree(tmp)
        present: dict[str, int] = {}
        absent: list[str] = []
        for rel in self._touched(plan):
            src = self.root / rel
            if src.is_file():
                mode = src.stat().st_mode & 0o7777
                copy_durable(src, tmp / "files" / rel, mode=mode)
                present[rel] = mode
            else:
                absent.append(rel)
        index = {
            "txid": plan.txid,
            "version": None if plan.old is None else str(plan.old),
            "created": datetime.now(UTC).isoformat(),
            "present": present,
            "absent": absent,
        }
        atomic_write_bytes(tmp / "index.json", json.dumps(index, indent=1).encode())
        fsync_dir(tmp)
        if final.exists():
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

    def _put_aside(self, target: Path) -> None:
        aside = target.with_name(target.name + ASIDE_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
        os.replace(target, aside)

    def swap(self, plan: SwapPlan, record: RecordTouch) -> None:
        """Rename the staged files in one by one; remove files the new release drops."""
        new_paths = {e.path for e in plan.new_files}
        removed = (
            []
            if plan.old_files is None
            else sorted(e.path for e in plan.old_files if e.path not in new_paths)
        )
        ops: list[tuple[str, FileEntry | None]] = [(e.path, e) for e in plan.new_files]
        ops += [(p, None) for p in removed]
        for n, (rel, entry) in enumerate(ops, start=1):
            record(rel)
            target = self.root / rel
            if entry is not None:
                staged = plan.staged(entry)
                if os.name == "posix":
                    os.chmod(staged, entry.mode)
                target.parent.mkdir(parents=True, exist_ok=True)
                if self.rename_aside and target.exists():
                    self._put_aside(target)
                os.replace(staged, target)
            elif target.exists():
                if self.rename_aside:
                    self._put_aside(target)
                else:
                    target.unlink()
            fsync_dir(target.parent)
            faults.hit(f"swap.file:{n}")

    def rollback(self, plan: SwapPlan, touched: Sequence[str]) -> None:
        """Restore every touched path from the backup (or remove it if it did not exist)."""
        if not touched:
            return
        index = self._index(plan)
        present = index.get("present")
        if not isinstance(present, dict):
            raise LayoutError("backup index has no 'present' mapping")
        files = self.backup_dir(plan.old) / "files"
        for rel in touched:
            target = self.root / rel
            if rel in present:
                if self.rename_aside and target.exists():
                    self._put_aside(target)
                copy_durable(files / rel, target, mode=int(present[rel]))
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                fsync_dir(target.parent)

    def _drop_aside(self, plan: SwapPlan) -> None:
        for rel in self._touched(plan):
            with contextlib.suppress(OSError):  # Windows: may still be locked; next time then
                (self.root / (rel + ASIDE_SUFFIX)).unlink()

    def finish(self, plan: SwapPlan, keep: set[Version], cutoff: datetime) -> None:
        """Remove ``.old`` files and backups older than ``cutoff`` whose version is not kept."""
        self._drop_aside(plan)
        keep_names = {_backup_name(v) for v in keep}
        base = self.root / BACKUP_DIR
        if not base.is_dir():
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
