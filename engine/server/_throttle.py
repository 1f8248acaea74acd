"""Throttling of failed credential checks (enrollment secrets, invite codes) per key.

A key (a device id, a client address) that failed ``limit`` times within
``window`` seconds is refused until its window ends, whatever it sends then,
so guessing is slow and the log stays short. Keys are kept in a bounded LRU:
beyond ``max_keys`` the least recently failed key is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Counts failures per key in fixed windows (see the module docstring)."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Allow ``limit`` failures per key per ``window`` seconds; remember ``max_keys``."""
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        hit = self._keys.get(key)
        if hit is None:
            return None
        ends, count = hit
        left = ends - self._clock()
        if left <= 0:
            del self._keys[key]
            return None
        return left if count >= self.limit else None

    def failed(self, key: str) -> int:
        """Count a failure of ``key``; the number of failures in its current window."""
        now = self._clock()
        ends, count = self._keys.pop(key, (now + self.window, 0))
        if ends <= now:
            ends, count = now + self.window, 0
        self._keys[key] = (ends, count + 1)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return count + 1
