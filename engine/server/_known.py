"""Which device ids may enroll: those in the operator repo's inventory (re-read on a miss)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from inventory.errors import InventoryError

__all__ = ["InventoryDevices", "load_inventory_devices"]

log = logging.getLogger("engine.server")

#: Fewest seconds between two re-reads of the inventory caused by unknown ids.
RELOAD_SECONDS = 10.0


def load_inventory_devices(root: Path) -> frozenset[str]:
    """The device ids of the operator repo at ``root``; raises InventoryError."""
    from inventory.loader import load_operator_repo

    return frozenset(load_operator_repo(root).inventory.devices)


class InventoryDevices:
    """The inventory's device ids; an unknown id re-reads the repo, at most every 10 s.

    So a device added to the inventory can enroll without restarting the server.
    """

    def __init__(
        self, root: Path, initial: frozenset[str], load: Callable[[Path], frozenset[str]]
    ) -> None:
        """Start from ``initial``; ``load`` re-reads the ids of the repo at ``root``."""
        self._root = root
        self._ids = initial
        self._load = load
        self._loaded_at = time.monotonic()

    def __contains__(self, device: object) -> bool:
        """Whether ``device`` is in the inventory (re-reading it when not, rate-limited)."""
        if device in self._ids:
            return True
        now = time.monotonic()
        if now - self._loaded_at < RELOAD_SECONDS:
            return False
        self._loaded_at = now
        try:
            self._ids = self._load(self._root)
        except InventoryError as e:
            log.error("inventory not re-read, it has errors (keeping the last good one):\n%s", e)
        return device in self._ids
