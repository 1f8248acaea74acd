"""The performance policy's pure decision (max_cpu_increase, max_rss_increase), from a table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.rollouts.policy import MIN_PERFORMANCE_SAMPLES, Regression, Usage, judge_performance
from inventory.models import RolloutPolicy

MB = 1_000_000
RSS = RolloutPolicy(max_rss_increase="25%")  # type: ignore[arg-type]
CPU = RolloutPolicy(max_cpu_increase=0.5)
BOTH = RolloutPolicy(max_rss_increase="25%", max_cpu_increase="50%")  # type: ignore[arg-type]
NONE = RolloutPolicy()
N = MIN_PERFORMANCE_SAMPLES


def old(rss: float = 20 * MB, cpu: float | None = 4.0, samples: int = 10) -> Usage:
    """The agent's mean usage on the release the device came from."""
    return Usage("3.0.1", samples, cpu, rss)


def new(rss: float = 20 * MB, cpu: float | None = 4.0, samples: int = N) -> Usage:
    """The agent's usage on the release judged (latest RSS, mean CPU)."""
    return Usage("3.0.4", samples, cpu, rss)


CASES: list[tuple[str, RolloutPolicy, Usage | None, Usage | None, Regression | None]] = [
    ("no policy: never", NONE, old(), new(rss=200 * MB, cpu=90), None),
    ("unchanged", BOTH, old(), new(), None),
    ("no samples before", RSS, None, new(rss=200 * MB), None),
    ("no samples after", RSS, old(), None, None),
    ("too few samples after", RSS, old(), new(rss=200 * MB, samples=N - 1), None),
    ("rss at the limit passes", RSS, old(rss=20 * MB), new(rss=25 * MB), None),
    (
        "rss past the limit fails",
        RSS,
        old(rss=20 * MB),
        new(rss=30 * MB),
        Regression(
            "rss",
            "memory 30.0 MB on 3.0.4 vs 20.0 MB on 3.0.1 (+50%), above max_rss_increase 25%",
        ),
    ),
    ("rss ratio past the limit but under 4 MiB is noise", RSS, old(rss=8 * MB), new(rss=12 * MB),
     None),
    ("cpu limit alone ignores memory", CPU, old(rss=20 * MB), new(rss=90 * MB), None),
    ("cpu within the limit", CPU, old(cpu=4.0), new(cpu=5.9), None),
    (
        "cpu past the limit fails",
        CPU,
        old(cpu=4.0),
        new(cpu=9.0),
        Regression(
            "cpu", "CPU 9.0% on 3.0.4 vs 4.0% on 3.0.1 (+125%), above max_cpu_increase 50%"
        ),
    ),
    ("cpu ratio past the limit but under 2 points is noise", CPU, old(cpu=0.1), new(cpu=1.5),
     None),
    ("cpu unknown before", CPU, old(cpu=None), new(cpu=50.0), None),
    ("cpu unknown after", CPU, old(), new(cpu=None), None),
    (
        "memory is judged first when both fail",
        BOTH,
        old(rss=20 * MB, cpu=4.0),
        new(rss=40 * MB, cpu=40.0),
        Regression(
            "rss",
            "memory 40.0 MB on 3.0.4 vs 20.0 MB on 3.0.1 (+100%), above max_rss_increase 25%",
        ),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "before", "after", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_judge_performance(
    policy: RolloutPolicy, before: Usage | None, after: Usage | None, expected: Regression | None
) -> None:
    """A device fails only past a limit, with enough samples, beyond the noise floor."""
    assert judge_performance(before, after, policy) == expected


@pytest.mark.parametrize(
    ("value", "fraction"),
    [("25%", 0.25), ("150%", 1.5), (0.25, 0.25), (" 10 % ", 0.1), ("ten%", None)],
)
def test_increase_parses_percentages(value: object, fraction: float | None) -> None:
    """`25%` and 0.25 mean the same increase; other text is refused naming the form."""
    if fraction is None:
        with pytest.raises(ValidationError, match="percentage such as '25%'"):
            RolloutPolicy.model_validate({"max_rss_increase": value})
        return
    policy = RolloutPolicy.model_validate({"max_rss_increase": value})
    assert policy.max_rss_increase == pytest.approx(fraction)


@pytest.mark.parametrize("value", ["0%", "-5%", 0, "abc%", "25"])
def test_increase_refuses_nonsense(value: object) -> None:
    """An increase must be a positive percentage."""
    with pytest.raises(ValidationError, match="max_rss_increase"):
        RolloutPolicy.model_validate({"max_rss_increase": value})
