"""rollout.after: names a group with a release, never the group itself, and no cycle."""

from __future__ import annotations

import pytest

from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from tests.inventory.conftest import DEVICES, GROUPS, WINDOWS_FILES, RepoMaker, manifest_text

#: GROUPS with a third managed group, so that cycles of three can be written.
THREE = GROUPS + "  windows-prod:\n    match: {platform: windows}\n    agent: {release: '3.0.1'}\n"


def _after(groups: str, group: str, after: str) -> str:
    """``groups`` with ``rollout: {after: AFTER}`` added to ``group``."""
    head = f"  {group}:\n"
    assert head in groups
    return groups.replace(head, f"{head}    rollout: {{after: {after}}}\n", 1)


#: (case id, groups.yaml text, every expected problem line)
CASES: list[tuple[str, str, list[str]]] = [
    (
        "unknown group with a suggestion",
        _after(GROUPS, "linux-prod", "[canry]"),
        [
            "inventory/groups.yaml:7:23: groups.linux-prod.rollout.after[0]: "
            "'canry' is not a group; did you mean 'canary'?"
        ],
    ),
    (
        "unknown group without a close name",
        _after(GROUPS, "linux-prod", "[canary, pilots]"),
        ["inventory/groups.yaml:7:31: groups.linux-prod.rollout.after[1]: 'pilots' is not a group"],
    ),
    (
        "the group itself",
        _after(GROUPS, "canary", "[canary]"),
        [
            "inventory/groups.yaml:3:23: groups.canary.rollout.after[0]: "
            "group 'canary' cannot wait for its own rollout"
        ],
    ),
    (
        "a group without agent",
        _after(GROUPS, "linux-prod", "[everyone]"),
        [
            "inventory/groups.yaml:7:23: groups.linux-prod.rollout.after[0]: "
            "group 'everyone' has no agent release, nothing to wait for"
        ],
    ),
    (
        "a cycle of two",
        _after(_after(GROUPS, "linux-prod", "[canary]"), "canary", "[linux-prod]"),
        [
            "inventory/groups.yaml:3:23: groups.canary.rollout.after[0]: groups wait for each "
            "other in a cycle: canary -> linux-prod -> canary; none of their rollouts would "
            "ever start"
        ],
    ),
    (
        "a cycle of three, named from its first group",
        _after(
            _after(_after(THREE, "windows-prod", "[canary]"), "linux-prod", "[windows-prod]"),
            "canary",
            "[linux-prod]",
        ),
        [
            "inventory/groups.yaml:3:23: groups.canary.rollout.after[0]: groups wait for each "
            "other in a cycle: canary -> linux-prod -> windows-prod -> canary; none of their "
            "rollouts would ever start"
        ],
    ),
    (
        "a group named twice",
        _after(GROUPS, "linux-prod", "[canary, canary]"),
        [
            "inventory/groups.yaml:7:22: groups.linux-prod.rollout.after: "
            "after names group 'canary' twice"
        ],
    ),
]


@pytest.mark.parametrize(("groups", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_after_is_reported_precisely(
    make_repo: RepoMaker, groups: str, expected: list[str]
) -> None:
    """Each mistake in rollout.after yields exactly the expected file:line:col: key: message."""
    root = make_repo({"inventory/groups.yaml": groups})
    before = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert [str(p) for p in info.value.problems] == expected
    after = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    assert after == before


def test_valid_after_loads(make_repo: RepoMaker) -> None:
    """A group may wait for another group with a release, in another file too."""
    root = make_repo(
        {
            "inventory/groups.yaml": _after(THREE, "linux-prod", "[canary, windows-prod]"),
            "inventory/more.yaml": "devices:\n  paris-pos-0004: {platform: windows}\n",
            "releases/3.0.1.yaml": manifest_text(
                "3.0.1", 1, extra=WINDOWS_FILES.format(version="3.0.1")
            ),
        }
    )
    repo = load_operator_repo(root)
    assert repo.inventory.groups["linux-prod"].rollout.after == ["canary", "windows-prod"]
    assert repo.inventory.groups["canary"].rollout.after == []


def test_group_of_a_broken_file_is_not_reported_missing(make_repo: RepoMaker) -> None:
    """A group named in after but defined in a file that does not load causes no follow-on error."""
    groups = GROUPS.replace("  canary:\n", "").replace(
        "    match: {tags: internal}\n    priority: 100\n    agent: {release: '3.0.2'}\n", ""
    )
    root = make_repo(
        {
            "inventory/groups.yaml": _after(groups, "linux-prod", "[canary]"),
            "inventory/canary.yaml": "groups:\n  canary:\n    priorty: 100\n",
            "inventory/devices.yaml": DEVICES,
        }
    )
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert [p.message for p in info.value.problems] == [
        "unknown key 'priorty'; did you mean 'priority'? (allowed: match, members, priority, "
        "agent, runtime, rollout, maintenance_window, description, ssh, vars, flags)"
    ]
