"""Per-release CPU and memory aggregates, and the change against the release before."""

from __future__ import annotations

import pytest

from engine.rollouts.performance import summarise

MB = 1_000_000.0
Row = tuple[int, float | None, float]


def test_medians_percentiles_and_change_on_the_same_devices() -> None:
    """Median and p95 over devices; the change compares only devices that ran both."""
    before: dict[str, Row] = {f"d{i}": (10, 1.0, 10 * MB) for i in range(20)}
    before |= {"a": (10, 2.0, 20 * MB), "b": (10, 2.0, 20 * MB)}
    per_release: dict[str, dict[str, Row]] = {
        "3.0.4": {
            "a": (5, 4.0, 40 * MB),
            "b": (5, 6.0, 60 * MB),
            "new": (5, 50.0, 500 * MB),  # not on 3.0.1: left out of the change
        },
        "3.0.1": before,
    }
    old, new = summarise(per_release)
    assert old.release == "3.0.1" and old.previous is None and old.devices == 22
    assert old.rss_bytes_median == 10 * MB and old.rss_bytes_p95 == 20 * MB
    assert new.release == "3.0.4" and new.devices == 3 and new.samples == 15
    assert new.cpu_percent_median == 6.0 and new.cpu_percent_p95 == 50.0
    assert new.previous == "3.0.1" and new.same_devices == 2
    assert new.rss_change == pytest.approx(1.5)  # median 50 MB vs 20 MB
    assert new.cpu_change == pytest.approx(1.5)  # median 5% vs 2%


def test_no_cpu_figures_and_no_common_devices() -> None:
    """Without CPU samples or shared devices the figures are absent, not zero."""
    rows = summarise({"3.0.1": {"a": (1, None, 10 * MB)}, "3.0.2": {"b": (1, None, 12 * MB)}})
    assert rows[1].cpu_percent_median is None and rows[1].same_devices == 0
    assert rows[1].rss_change is None and rows[1].cpu_change is None
