"""The engine's own Prometheus instruments: counters and histograms of what it does.

Created on first use, not at import: ``prometheus_client`` picks its value
store (in memory, or files under ``$PROMETHEUS_MULTIPROC_DIR`` shared by
``engine serve --workers N``) when it is imported, so ``engine serve`` sets
that variable before anything asks for an instrument. Values derived from
the store (devices by version, rollouts by state) are read at scrape time
instead (``engine.server._metrics``). docs/metrics.md lists every metric.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram, disable_created_metrics, values

    # *_created samples: not kept in multiprocess mode; left out in both for one format.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    # The value store is chosen when prometheus_client is imported; choose again now, in
    # case it was imported before engine serve set $PROMETHEUS_MULTIPROC_DIR.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
__all__ = ["Instruments", "instruments", "store_failed"]

#: Update durations (seconds from the download's start to the commit) worth telling apart.
UPDATE_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Controller ticks: milliseconds normally, seconds when a rollout is huge or the store slow.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Instruments:
    """Every counter and histogram the engine updates (one set per process)."""

    checkins: Counter
    enrollments: Counter
    events: Counter
    update_outcomes: Counter
    update_duration: Histogram
    performance_failures: Counter
    tick_duration: Histogram
    store_errors: Counter


_lock = threading.Lock()
_made: Instruments | None = None


def instruments() -> Instruments:
    """This process's instruments (created, and ``prometheus_client`` imported, on first call)."""
    global _made  # noqa: PLW0603 - one set per process, made lazily (see the module docstring)
    found = _made
    if found is not None:
        return found
    with _lock:
        if _made is None:
            _made = _make()
        return _made


def _make() -> Instruments:
    from prometheus_client import Counter, Histogram

    # registry=None: each server registers them in its own registry (several apps may
    # live in one test process), or reads them from the multiprocess files.
    return Instruments(
        checkins=Counter(
            "engine_checkins",
            "Device check-ins answered, by HTTP status (200 answered, others refused)",
            ["status"],
            registry=None,
        ),
        enrollments=Counter(
            "engine_enrollments",
            "Enrollment requests, by result (enrolled or the refusal's HTTP status)",
            ["result"],
            registry=None,
        ),
        events=Counter(
            "engine_step_events",
            "Step events devices posted, by step and status",
            ["step", "status"],
            registry=None,
        ),
        update_outcomes=Counter(
            "engine_update_outcomes",
            "Device transactions that ended, from their step events: committed, or failed at "
            "failed_step (the transaction then rolls back or stops before the swap)",
            ["release", "result", "failed_step"],
            registry=None,
        ),
        update_duration=Histogram(
            "engine_update_duration_seconds",
            "From a device's download start to its commit, from its step events",
            ["release"],
            buckets=UPDATE_BUCKETS,
            registry=None,
        ),
        performance_failures=Counter(
            "engine_performance_failures",
            "Devices failed by max_cpu_increase / max_rss_increase, by release and resource",
            ["release", "resource"],
            registry=None,
        ),
        tick_duration=Histogram(
            "engine_controller_tick_seconds",
            "Duration of the rollout controller's ticks (leader only)",
            buckets=TICK_BUCKETS,
            registry=None,
        ),
        store_errors=Counter(
            "engine_store_errors",
            "Store operations that failed (the store unreachable, locked or broken)",
            ["operation"],
            registry=None,
        ),
    )


def store_failed(operation: str) -> None:
    """Count one failed store operation (``read``, ``write`` or ``device_write``)."""
    instruments().store_errors.labels(operation).inc()
