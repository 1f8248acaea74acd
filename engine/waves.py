"""Deterministic, stable assignment of devices to the waves of a rollout.

A device's position in a group is a fraction in [0, 1) derived from the sha256
of ``"<group>:<device>"``: it depends on nothing else, so adding or removing
other devices never moves a device to another wave. The wave is the first one
whose cumulative percentage exceeds ``fraction * 100``.

Small groups may draw no device into the first (canary) wave. So that every
rollout starts with a canary, :func:`assign_waves` moves the changing device
with the lowest fraction into wave 0 when wave 0 would otherwise hold no
changing device. That is the one exception to stability: when the fleet
changes, at most that one device changes wave.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["assign_waves", "wave_fraction", "wave_index", "wave_indices"]

_SCALE = float(1 << 64)


def wave_fraction(group: str, device: str) -> float:
    """The device's stable position in its group, a fraction in [0, 1)."""
    digest = hashlib.sha256(f"{group}:{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def wave_index(fraction: float, waves: Sequence[float]) -> int:
    """Index of the first wave whose cumulative percentage exceeds ``fraction * 100``."""
    index = bisect.bisect_right(waves, fraction * 100)
    # fraction < 1 and the last wave is 100, so this only guards malformed input.
    return min(index, len(waves) - 1)


def wave_indices(
    group: str, devices: Sequence[str], changing: Sequence[bool], waves: Sequence[float]
) -> list[int]:
    """Wave index of each device of one rollout (same order), with a canary guarantee.

    If at least one device is changing and none of the changing devices falls
    into wave 0, the changing device with the lowest fraction joins wave 0.
    """
    result: list[int] = []
    canary_found = False
    lowest: tuple[float, str, int] | None = None
    sha256 = hashlib.sha256
    bisect_right = bisect.bisect_right
    last = len(waves) - 1
    append = result.append
    for position, device in enumerate(devices):
        fraction = int.from_bytes(sha256(f"{group}:{device}".encode()).digest()[:8]) / _SCALE
        index = min(bisect_right(waves, fraction * 100), last)
        append(index)
        if changing[position]:
            if index == 0:
                canary_found = True
            elif lowest is None or (fraction, device) < lowest[:2]:
                lowest = (fraction, device, position)
    if not canary_found and lowest is not None:
        result[lowest[2]] = 0
    return result


def assign_waves(
    group: str,
    devices: Iterable[tuple[str, bool]],
    waves: Sequence[float],
) -> dict[str, int]:
    """Wave index of each ``(device, changing)`` of one rollout; see :func:`wave_indices`."""
    pairs = list(devices)
    indices = wave_indices(group, [d for d, _ in pairs], [c for _, c in pairs], waves)
    return {device: index for (device, _), index in zip(pairs, indices, strict=True)}
