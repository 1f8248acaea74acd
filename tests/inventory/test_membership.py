"""Group membership and precedence: which group decides a device's release."""

from __future__ import annotations

from typing import Any

import pytest

from inventory.membership import (
    Membership,
    assign_groups,
    group_members,
    groups_of,
    membership_of,
)
from inventory.models import Inventory

DEVICES: dict[str, Any] = {
    "w-berlin": {"platform": "windows", "site": "berlin", "tags": ["internal", "pos"]},
    "l-hamburg": {"platform": "linux", "site": "hamburg", "labels": {"customer": "acme"}},
    "l-berlin": {"platform": "linux", "site": "berlin", "labels": {"customer": "globex"}},
    "m-munich": {"platform": "macos", "site": "munich", "tags": ["pos"], "pin": "3.0.0"},
    "no-site": {"platform": "linux"},
}


def _inv(groups: dict[str, Any]) -> Inventory:
    return Inventory.model_validate({"devices": DEVICES, "groups": groups})


def _agent(release: str, **extra: Any) -> dict[str, Any]:
    return {"agent": {"release": release}, **extra}


#: (case, groups, expected assignment)
CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (
        "platform selector",
        {"linux": _agent("1", match={"platform": "linux"})},
        {"l-hamburg": "linux", "l-berlin": "linux", "no-site": "linux"},
    ),
    (
        "a list means any of",
        {"some": _agent("1", match={"platform": ["windows", "macos"]})},
        {"w-berlin": "some", "m-munich": "some"},
    ),
    (
        "every key must match",
        {"g": _agent("1", match={"platform": "linux", "site": "berlin"})},
        {"l-berlin": "g"},
    ),
    (
        "site list",
        {"g": _agent("1", match={"site": ["hamburg", "munich"]})},
        {"l-hamburg": "g", "m-munich": "g"},
    ),
    (
        "tag: the device has the tag",
        {"g": _agent("1", match={"tags": "pos"})},
        {"w-berlin": "g", "m-munich": "g"},
    ),
    (
        "tags list: any of the tags",
        {"g": _agent("1", match={"tags": ["internal", "nope"]})},
        {"w-berlin": "g"},
    ),
    (
        "labels: each label must match, a list means any of",
        {"g": _agent("1", match={"labels": {"customer": ["acme", "globex"]}, "site": "berlin"})},
        {"l-berlin": "g"},
    ),
    (
        "explicit members in addition to match",
        {"g": _agent("1", match={"site": "munich"}, members=["no-site"])},
        {"m-munich": "g", "no-site": "g"},
    ),
    (
        "members only (empty selector matches nothing)",
        {"g": _agent("1", members=["l-berlin"])},
        {"l-berlin": "g"},
    ),
    (
        "higher priority wins",
        {
            "prod": _agent("1", match={"platform": "linux"}),
            "canary": _agent("2", match={"site": "berlin"}, priority=100),
        },
        {"l-hamburg": "prod", "no-site": "prod", "l-berlin": "canary", "w-berlin": "canary"},
    ),
    (
        "groups without agent do not decide",
        {
            "prod": _agent("1", match={"platform": "linux"}),
            "catalogue": {"match": {"platform": "linux"}, "priority": 500},
        },
        {"l-hamburg": "prod", "l-berlin": "prod", "no-site": "prod"},
    ),
    (
        "equal priority groups that agree share devices (first by name recorded)",
        {
            "b-linux": _agent("1", match={"platform": "linux"}),
            "a-berlin": _agent("1", match={"site": "berlin"}),
        },
        {
            "l-hamburg": "b-linux",
            "no-site": "b-linux",
            "l-berlin": "a-berlin",
            "w-berlin": "a-berlin",
        },
    ),
    (
        "pinned devices still belong to their winning group",
        {"macs": _agent("2", match={"platform": "macos"})},
        {"m-munich": "macs"},
    ),
]


@pytest.mark.parametrize(("groups", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_assignment(groups: dict[str, Any], expected: dict[str, str]) -> None:
    """Each device gets the highest-priority matching group with an agent; others none."""
    assignment, conflicts = assign_groups(_inv(groups))
    assert conflicts == []
    assert assignment == expected


@pytest.mark.parametrize(
    ("other", "differences"),
    [
        (_agent("2", match={"site": "berlin"}), ("release 1 vs 2",)),
        (
            _agent("1", match={"site": "berlin"}, rollout={"waves": [50, 100]}),
            ("rollout policy",),
        ),
        (
            _agent(
                "1",
                match={"site": "berlin"},
                maintenance_window={"cron": "0 2 * * *", "duration": "1h"},
            ),
            ("maintenance window",),
        ),
    ],
    ids=["release", "rollout", "window"],
)
def test_disagreeing_groups_at_same_priority_conflict(
    other: dict[str, Any], differences: tuple[str, ...]
) -> None:
    """Two top-priority groups that disagree are one conflict listing every shared device."""
    inv = _inv({"a-linux": _agent("1", match={"platform": "linux"}), "b-berlin": other})
    _, conflicts = assign_groups(inv)
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict.groups == ("a-linux", "b-berlin")
    assert conflict.priority == 0
    assert conflict.devices == ("l-berlin",)
    assert conflict.differences == differences


def test_conflict_below_a_winner_is_not_a_conflict() -> None:
    """Disagreeing groups do not conflict over devices a higher-priority group already took."""
    inv = _inv(
        {
            "a": _agent("1", match={"site": "berlin"}),
            "b": _agent("2", match={"site": "berlin"}),
            "top": _agent("3", match={"site": "berlin"}, priority=10),
        }
    )
    assignment, conflicts = assign_groups(inv)
    assert conflicts == []
    assert assignment == {"w-berlin": "top", "l-berlin": "top"}


def test_membership_and_groups_of() -> None:
    """membership_of gives the winner with its priority; groups_of lists every group."""
    inv = _inv(
        {
            "prod": _agent("1", match={"platform": "linux"}),
            "canary": _agent("2", match={"site": "berlin"}, priority=100),
            "acme": {"match": {"labels": {"customer": "acme"}}},
        }
    )
    assignment, _ = assign_groups(inv)
    assert membership_of(inv, assignment, "l-berlin") == Membership("canary", 100)
    assert membership_of(inv, assignment, "m-munich") is None
    assert groups_of(inv, "l-hamburg") == ["acme", "prod"]
    assert groups_of(inv, "l-berlin") == ["canary", "prod"]
    assert groups_of(inv, "nobody") == []
    members = group_members(inv)
    assert members["acme"] == {"l-hamburg"}
    assert members["canary"] == {"w-berlin", "l-berlin"}


def test_matches_agrees_with_index() -> None:
    """The set-based matching gives the same members as Match.matches device by device."""
    groups = {
        "g1": {"match": {"platform": ["linux", "macos"], "tags": ["pos", "x"]}},
        "g2": {"match": {"labels": {"customer": "acme"}}},
        "g3": {"match": {"site": ["berlin"], "platform": "windows"}},
        "g4": {"match": {}},
    }
    inv = _inv(groups)
    members = group_members(inv)
    for name, group in inv.groups.items():
        expected = {
            d
            for d, dev in inv.devices.items()
            if not group.match.is_empty and group.match.matches(dev)
        }
        assert members[name] == expected
