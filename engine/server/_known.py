"""Which device ids may enroll: those in the operator repo's inventory (re-read on a miss)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from inventory.errors import InventoryError

__all__ = ["InventoryDevices", "inventory_signature", "load_inventory_devices"]

log = logging.getLogger("engine.server")

#: Fewest seconds between two looks at the inventory caused by unknown ids.
RELOAD_SECONDS = 10.0

#: What identifies the inventory's files as they are: (path, size, mtime) of each.
Signature = frozenset[tuple[str, int, int]]


def load_inventory_devices(root: Path) -> frozenset[str]:
    """The device ids of the operator repo at ``root``; raises InventoryError."""
    from inventory.loader import load_operator_repo

    return frozenset(load_operator_repo(root).inventory.devices)


def inventory_signature(root: Path) -> Signature:
    """(path, size, mtime) of every file and directory under ``root``/inventory: changes
    when a file is added, removed or written."""
    entries: set[tuple[str, int, int]] = set()
    for directory, _dirs, files in os.walk(root / "inventory"):
        for name in [".", *files]:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            entries.add((path, st.st_size, st.st_mtime_ns))
    return frozenset(entries)


class InventoryDevices:
    """The inventory's device ids; an unknown id re-reads the repo when its files changed,
    looking at most every 10 s.

    So a device added to the inventory can enroll without restarting the server,
    and unknown ids asking again and again cost a few ``stat`` calls, not a load.
    """

    def __init__(
        self,
        root: Path,
        initial: frozenset[str],
        load: Callable[[Path], frozenset[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start from ``initial``; ``load`` re-reads the ids of the repo at ``root``."""
        self._root = root
        self._ids = initial
        self._load = load
        self._clock = clock
        self._looked_at = clock()
        self._signature = inventory_signature(root)

    def __contains__(self, device: object) -> bool:
        """Whether ``device`` is in the inventory (re-reading it when not, rate-limited)."""
        if device in self._ids:
            return True
        now = self._clock()
        if now - self._looked_at < RELOAD_SECONDS:
            return False
        self._looked_at = now
        signature = inventory_signature(self._root)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self._ids = self._load(self._root)
        except InventoryError as e:
            log.error("inventory not re-read, it has errors (keeping the last good one):\n%s", e)
        return device in self._ids
