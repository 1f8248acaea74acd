"""What each release costs on the devices: CPU and memory aggregates, and the change
against the release before it on the same devices (performance-impact tracking).

Per device and release the store keeps the sums of the samples its runtime
sent (``performance`` table); here each device's mean CPU % and mean RSS
become one value, and a release's figures are the median and 95th
percentile over its devices.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, select

from engine.rollouts.policy import parse_version
from engine.store.schema import performance

__all__ = ["ReleasePerformance", "release_performance", "summarise"]


class ReleasePerformance(BaseModel):
    """The agent's cost under one release, over the devices that sampled it."""

    model_config = ConfigDict(frozen=True)

    release: str
    devices: int
    samples: int
    cpu_percent_median: float | None
    cpu_percent_p95: float | None
    rss_bytes_median: float | None
    rss_bytes_p95: float | None
    previous: str | None = None  # the release before it (by version) with samples
    same_devices: int = 0  # devices with samples under both
    cpu_change: float | None = None  # relative change of the median over those devices
    rss_change: float | None = None


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def _change(now: list[float], before: list[float]) -> float | None:
    if not now or not before:
        return None
    base = statistics.median(before)
    return None if base <= 0 else statistics.median(now) / base - 1


#: device -> (samples, mean CPU % or None, mean RSS)
_PerDevice = dict[str, tuple[int, float | None, float]]


def summarise(per_release: dict[str, _PerDevice]) -> list[ReleasePerformance]:
    """Aggregates per release (oldest version first) from each device's means."""
    ordered = sorted(per_release, key=lambda v: (parse_version(v) is None, parse_version(v), v))
    out: list[ReleasePerformance] = []
    previous: str | None = None
    for release in ordered:
        rows = per_release[release]
        cpu = [c for _, c, _ in rows.values() if c is not None]
        rss = [r for _, _, r in rows.values()]
        item = ReleasePerformance(
            release=release,
            devices=len(rows),
            samples=sum(n for n, _, _ in rows.values()),
            cpu_percent_median=statistics.median(cpu) if cpu else None,
            cpu_percent_p95=_p95(cpu) if cpu else None,
            rss_bytes_median=statistics.median(rss) if rss else None,
            rss_bytes_p95=_p95(rss) if rss else None,
        )
        if previous is not None:
            before = per_release[previous]
            same = sorted(set(rows) & set(before))
            cpu_now = [c for d in same if (c := rows[d][1]) is not None]
            cpu_then = [c for d in same if (c := before[d][1]) is not None]
            item = item.model_copy(
                update={
                    "previous": previous,
                    "same_devices": len(same),
                    "cpu_change": _change(cpu_now, cpu_then),
                    "rss_change": _change([rows[d][2] for d in same], [before[d][2] for d in same]),
                }
            )
        out.append(item)
        previous = release
    return out


def release_performance(conn: Connection) -> list[ReleasePerformance]:
    """Every release's CPU and memory figures from the stored samples."""
    p = performance
    per_release: dict[str, _PerDevice] = defaultdict(dict)
    for device, version, samples, cpu_samples, cpu_sum, rss_sum in conn.execute(
        select(p.c.device, p.c.version, p.c.samples, p.c.cpu_samples, p.c.cpu_sum, p.c.rss_sum)
    ):
        n = int(samples)
        if n == 0:
            continue
        cpu = float(cpu_sum) / int(cpu_samples) if cpu_samples else None
        per_release[str(version)][str(device)] = (n, cpu, float(rss_sum) / n)
    return summarise(per_release)
