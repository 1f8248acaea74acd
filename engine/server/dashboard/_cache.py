"""A few seconds' memory of the dashboard's aggregate reads (one per replica).

At 100,000 devices the fleet counts and the rollouts' wave counts each scan a
table; every open dashboard refreshes every few seconds. Within ``ttl`` the
same answer is served again; an action through the dashboard clears it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ReadCache"]

T = TypeVar("T")


class ReadCache:
    """Answers kept ``ttl`` seconds by key; computed at most once at a time per key."""

    def __init__(self, ttl: float) -> None:
        """Keep answers ``ttl`` seconds (0: never keep)."""
        self._ttl = ttl
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, Any]] = {}
        self._computing: dict[str, threading.Lock] = {}

    def get(self, key: str, compute: Callable[[], T]) -> T:
        """The kept answer for ``key``, or ``compute()`` (then kept)."""
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]  # type: ignore[no-any-return]
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                hit = self._kept.get(key)
                if hit is not None and hit[0] > time.monotonic():
                    return hit[1]  # type: ignore[no-any-return]
            value = compute()
            with self._lock:
                if self._ttl > 0:
                    self._kept[key] = (time.monotonic() + self._ttl, value)
            return value

    def clear(self) -> None:
        """Forget every kept answer (after a change made here)."""
        with self._lock:
            self._kept.clear()
