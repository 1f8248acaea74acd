"""Validation that sees the whole rollout: gates without devices, platforms without artifacts,
groups matching nothing (with near-misses); each message checked by its exact text."""

from __future__ import annotations

import pytest

from engine.cli import main
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from tests.inventory.conftest import DEVICES, RepoMaker

#: Two internal canaries and a linux fleet gated on them; 3.0.2 for linux only.
CANARY_DEVICES = (
    DEVICES.replace("platform: windows", "platform: linux")
    + "  it-0001:\n    platform: linux\n    tags: [canary]\n"
    + "  it-0002:\n    platform: linux\n    tags: [canary]\n"
)
CANARY_GROUPS = """\
groups:
  canary:
    match: {tags: canary}
    priority: 100
    agent: {release: '3.0.2'}
  fleet:
    match: {platform: linux}
    agent: {release: '3.0.2'}
    rollout: {after: [canary]}
"""


def _problems(make_repo: RepoMaker, files: dict[str, str | None]) -> list[str]:
    root = make_repo(files)
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    return [str(p) for p in info.value.problems]


def test_gate_typo_fails_with_the_near_miss(make_repo: RepoMaker) -> None:
    """A tag typo empties the canary group: the fleet's after fails, naming the near-miss."""
    problems = _problems(
        make_repo,
        {
            "inventory/devices.yaml": CANARY_DEVICES,
            "inventory/groups.yaml": CANARY_GROUPS.replace("tags: canary", "tags: canry"),
        },
    )
    assert problems == [
        "inventory/groups.yaml:9:23: groups.fleet.rollout.after[0]: group 'canary' has no "
        "devices (tag `canry` matches nothing; 2 devices have `canary`): 'fleet' would roll "
        "out 3.0.2 without waiting for it"
    ]


def test_gate_on_an_older_release_fails(make_repo: RepoMaker) -> None:
    """A gate group still on an older release than the gated group is an error."""
    problems = _problems(
        make_repo,
        {
            "inventory/devices.yaml": CANARY_DEVICES,
            "inventory/groups.yaml": CANARY_GROUPS.replace("'3.0.2'", "'3.0.1'", 1),
        },
    )
    assert problems == [
        "inventory/groups.yaml:9:23: groups.fleet.rollout.after[0]: group 'canary' runs "
        "release 3.0.1, older than 3.0.2: 'fleet' would roll out 3.0.2 without waiting for "
        "it (after waits for a rollout of the same release); move 'canary' to 3.0.2 first or "
        "with it"
    ]


def test_gate_ahead_of_the_group_loads(make_repo: RepoMaker) -> None:
    """Canary first: a gate already on a newer release than the gated group is valid."""
    root = make_repo(
        {
            "inventory/devices.yaml": CANARY_DEVICES,
            "inventory/groups.yaml": CANARY_GROUPS.replace(
                "'3.0.2'}\n    rollout", "'3.0.1'}\n    rollout"
            ),
        }
    )
    assert load_operator_repo(root).inventory.groups["fleet"].rollout.after == ["canary"]


def test_platform_without_artifact_fails(make_repo: RepoMaker) -> None:
    """A group whose devices run a platform its release has no files for is an error."""
    problems = _problems(
        make_repo,
        {
            "inventory/groups.yaml": "groups:\n  all:\n    match: {site: [berlin, munich]}\n"
            "    agent: {release: '3.0.1'}\n",
        },
    )
    assert problems == [
        "inventory/groups.yaml:4:22: groups.all.agent.release: release 3.0.1 has no artifact "
        "for macos, but 1 of the group's devices runs macos (e.g. munich-mac-0003): add macos "
        "files to releases/3.0.1.yaml, or limit the group with match: {platform: [linux]}",
        "inventory/groups.yaml:4:22: groups.all.agent.release: release 3.0.1 has no artifact "
        "for windows, but 1 of the group's devices runs windows (e.g. berlin-pos-0001): add "
        "windows files to releases/3.0.1.yaml, or limit the group with match: {platform: "
        "[linux]}",
    ]


def test_member_outside_the_platform_limit_is_allowed(make_repo: RepoMaker) -> None:
    """A group that limits its platforms may list a member of another platform (left blocked)."""
    root = make_repo({})  # linux-prod: match platform linux, members [munich-mac-0003]
    assert "munich-mac-0003" in load_operator_repo(root).inventory.groups["linux-prod"].members


def test_group_matching_nothing_warns_with_near_misses(
    make_repo: RepoMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate passes but warns for groups matching no device, with the closest values."""
    root = make_repo(
        {
            "inventory/more.yaml": "groups:\n"
            "  typo:\n    match: {tags: internl}\n"
            "  nowhere:\n    match: {site: paris}\n"
            "  label:\n    match: {labels: {customer: acm}}\n"
            "  both:\n    match: {site: munich, tags: internal}\n"
            "  blank: {}\n",
        }
    )
    assert main(["validate", "-C", str(root)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: inventory/more.yaml:3:5: groups.typo.match: matches no device: tag "
        "`internl` matches nothing; 1 device has `internal`",
        "warning: inventory/more.yaml:5:5: groups.nowhere.match: matches no device: site "
        "`paris` matches nothing; no device has a similar site",
        "warning: inventory/more.yaml:7:5: groups.label.match: matches no device: label "
        "customer `acm` matches nothing; 1 device has `acme`",
        "warning: inventory/more.yaml:9:5: groups.both.match: matches no device: each key "
        "matches some devices, but no device matches all of them",
        "warning: inventory/more.yaml:10:10: groups.blank.match: matches no device: its match "
        "is empty and it lists no members",
    ]


def test_gate_whose_devices_all_go_elsewhere_fails(make_repo: RepoMaker) -> None:
    """A gate group whose devices are all won by a group of higher priority has no rollout."""
    groups = CANARY_GROUPS + (
        "  lab:\n    match: {tags: canary}\n    priority: 200\n    agent: {release: '3.0.2'}\n"
    )
    problems = _problems(
        make_repo, {"inventory/devices.yaml": CANARY_DEVICES, "inventory/groups.yaml": groups}
    )
    assert problems == [
        "inventory/groups.yaml:9:23: groups.fleet.rollout.after[0]: group 'canary' has no "
        "devices (each of its devices belongs to a group of higher priority): 'fleet' would "
        "roll out 3.0.2 without waiting for it"
    ]
