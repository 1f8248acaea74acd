"""What the transaction executor needs from a layout of the agent root."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from fleetbase.version import Version
from states.manifest import FileEntry

__all__ = ["Layout", "SwapPlan"]


@dataclass(frozen=True)
class SwapPlan:
    """One swap: from the installed release's files to the target's, staged in ``staging``.

    ``old_files`` is None when the installed release's file list is unknown
    (a field install adopted without its manifest): then only paths of the
    new release are touched and nothing is removed.
    """

    txid: str
    old: Version | None
    new: Version
    old_files: Sequence[FileEntry] | None
    new_files: Sequence[FileEntry]
    staging: Path

    def staged(self, entry: FileEntry) -> Path:
        """Where the verified download of ``entry`` waits."""
        return self.staging / "files" / entry.path


#: Called with a path *before* the swap touches it; must durably record it (the journal).
RecordTouch = Callable[[str], None]


class Layout(Protocol):
    """How releases are arranged under the agent root and switched."""

    name: str
    root: Path

    def active_dir(self, version: Version) -> Path:
        """The directory the agent of ``version`` runs in once it is active (RunSpec.cwd)."""
        ...

    def installed_path(self, version: Version, entry: FileEntry) -> Path:
        """Where ``entry`` of the active release ``version`` lives."""
        ...

    def has_files(self) -> bool:
        """True when the agent root holds an install (used to adopt a field install)."""
        ...

    def restore_source(self, version: Version) -> Path | None:
        """A directory holding a complete local copy of ``version``'s files, if one is kept."""
        ...

    def backup(self, plan: SwapPlan) -> None:
        """Make the installed release restorable (idempotent: redone from scratch)."""
        ...

    def swap(self, plan: SwapPlan, record: RecordTouch) -> None:
        """Make the staged target the active release."""
        ...

    def rollback(self, plan: SwapPlan, touched: Sequence[str]) -> None:
        """Make the previous release active again, exactly as it was (idempotent)."""
        ...

    def clear_temporaries(self, plan: SwapPlan) -> None:
        """Remove every temporary file a killed run of this transaction may have left in the
        agent root (on recovery and when the journal closes)."""
        ...

    def finish(self, plan: SwapPlan, keep: set[Version], cutoff: datetime) -> None:
        """After commit: drop leftovers, prune backups older than ``cutoff`` not in ``keep``."""
        ...

    def discard(self, plan: SwapPlan) -> None:
        """After a rollback: drop what the failed target left in the agent root."""
        ...
