"""Per-device event quotas: a token bucket per device, in memory, bounded in size."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["EventQuota"]

#: Devices tracked at once; the least recently seen are forgotten beyond this (a forgotten
#: device starts again with a full bucket, which costs at most one burst).
_MAX_DEVICES = 200_000


class EventQuota:
    """How many step events each device may still post: ``burst`` at once, refilled at
    ``per_minute``. Per worker process (each replica and worker counts on its own)."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = _MAX_DEVICES,
    ) -> None:
        """Allow ``burst`` events at once and ``per_minute`` on average per device."""
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_devices = max_devices
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, device: str, count: int) -> float:
        """Take ``count`` events from ``device``'s bucket: 0 when allowed, else the seconds
        until they would be (nothing is taken then)."""
        now = self._clock()
        level, at = self._buckets.pop(device, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        wait = 0.0
        if count <= level:
            level -= count
        else:
            wait = (min(count, self._burst) - level) / self._rate
        self._buckets[device] = (level, now)
        if len(self._buckets) > self._max_devices:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """``wait`` seconds as a Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))
