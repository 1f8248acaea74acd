"""Wave assignment: deterministic, stable under fleet changes, proportional, with a canary."""

from __future__ import annotations

from typing import Any

from engine.planner import plan_fleet
from engine.waves import assign_waves, wave_fraction, wave_index
from states.plan import Plan
from tests.planner.helpers import NOW, make_repo, make_reports

WAVES = [5.0, 25.0, 50.0, 100.0]


def _fleet(names: list[str], waves: list[float] = WAVES) -> Plan:
    inventory: dict[str, Any] = {
        "devices": {n: {"platform": "linux"} for n in names},
        "groups": {
            "linux-prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.1"},
                "rollout": {"waves": waves},
            }
        },
    }
    reports = make_reports(
        {n: {"agent_version": "3.0.0", "platform": "linux", "last_seen": NOW} for n in names}
    )
    return plan_fleet(make_repo(inventory), reports, NOW, stale_after=NOW - NOW.replace(year=2025))


def _waves(plan: Plan) -> dict[str, int | None]:
    return {d.device: d.wave for d in plan.devices}


def test_fraction_is_sha256_of_group_and_device() -> None:
    """The fraction is a fixed function of "<group>:<device>" (same on every run and machine)."""
    assert wave_fraction("linux-prod", "berlin-srv-0001") == wave_fraction(
        "linux-prod", "berlin-srv-0001"
    )
    assert wave_fraction("linux-prod", "a") != wave_fraction("windows-prod", "a")
    # Pinned value: changing the hash would silently reshuffle every fleet's waves.
    assert round(wave_fraction("g", "d"), 12) == round(
        int.from_bytes(__import__("hashlib").sha256(b"g:d").digest()[:8], "big") / 2**64, 12
    )
    assert 0 <= wave_fraction("g", "d") < 1


def test_wave_index_boundaries() -> None:
    """A fraction exactly on a wave's percentage belongs to the next wave."""
    assert wave_index(0.0, WAVES) == 0
    assert wave_index(0.0499, WAVES) == 0
    assert wave_index(0.05, WAVES) == 1
    assert wave_index(0.2499, WAVES) == 1
    assert wave_index(0.5, WAVES) == 3
    assert wave_index(0.9999999, WAVES) == 3
    assert wave_index(0.3, [100.0]) == 0


def test_adding_devices_keeps_existing_waves() -> None:
    """Adding 1000 devices to a group never moves an existing device to another wave."""
    base = [f"dev-{i:05d}" for i in range(500)]
    before = _waves(_fleet(base))
    after = _waves(_fleet(base + [f"new-{i:05d}" for i in range(1000)]))
    assert all(after[d] == before[d] for d in base)
    assert set(before.values()) == {0, 1, 2, 3}


def test_removing_devices_keeps_remaining_waves() -> None:
    """Removing half the group leaves every remaining device in its wave."""
    base = [f"dev-{i:05d}" for i in range(800)]
    before = _waves(_fleet(base))
    kept = base[::2]
    after = _waves(_fleet(kept))
    assert all(after[d] == before[d] for d in kept)


def test_distribution_matches_percentages() -> None:
    """On 10k devices each wave holds its share of the group within one percentage point."""
    names = [f"dev-{i:05d}" for i in range(10_000)]
    plan = _fleet(names)
    counts = [w.devices for w in plan.rollouts[0].waves]
    shares = [c / len(names) * 100 for c in counts]
    expected = [5, 20, 25, 50]
    for share, want in zip(shares, expected, strict=True):
        assert abs(share - want) < 1.0, (shares, expected)
    assert sum(w.changing for w in plan.rollouts[0].waves) == 10_000


def test_small_group_gets_one_canary() -> None:
    """A group too small for its first wave still starts with exactly one canary: the lowest."""
    names = ["a", "b", "c"]
    plan = _fleet(names, waves=[1.0, 100.0])
    waves = _waves(plan)
    lowest = min(names, key=lambda n: wave_fraction("linux-prod", n))
    assert waves[lowest] == 0
    assert sorted(w for w in waves.values() if w is not None) == [0, 1, 1]
    assert plan.rollouts[0].waves[0].changing == 1


def test_canary_is_a_changing_device() -> None:
    """The canary promotion picks among changing devices only, never an unchanged one."""
    devices = [("up-to-date", False), ("needs-update", True)]
    waves = assign_waves("g", devices, [0.001, 100.0])
    assert waves["needs-update"] == 0
    assert waves["up-to-date"] == 1


def test_no_canary_promotion_without_changes() -> None:
    """With nothing changing, no device is promoted into the first wave."""
    waves = assign_waves("g", [("a", False), ("b", False)], [0.001, 100.0])
    assert waves == {"a": 1, "b": 1}


def test_filter_does_not_change_waves() -> None:
    """--device sees the same wave as the whole-fleet plan, since waves use the whole group."""
    names = [f"dev-{i:03d}" for i in range(40)]
    whole = _waves(_fleet(names, waves=[1.0, 100.0]))
    canary = next(d for d, w in whole.items() if w == 0)
    inventory: dict[str, Any] = {
        "devices": {n: {"platform": "linux"} for n in names},
        "groups": {
            "linux-prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.1"},
                "rollout": {"waves": [1.0, 100.0]},
            }
        },
    }
    reports = make_reports(
        {n: {"agent_version": "3.0.0", "platform": "linux", "last_seen": NOW} for n in names}
    )
    one = plan_fleet(
        make_repo(inventory),
        reports,
        NOW,
        stale_after=NOW - NOW.replace(year=2025),
        only_device=canary,
    )
    assert [(d.device, d.wave) for d in one.devices] == [(canary, 0)]
