"""Which groups a device belongs to, and which group decides its release.

A device belongs to a group when it matches the group's ``match`` selector or
is listed in its ``members``. Among the groups with an ``agent`` spec, the one
with the highest ``priority`` wins; two winners at the same priority that
disagree (release, rollout policy or maintenance window) are a ``Conflict``.

Matching is done with set operations over an index of the fleet (platform,
site, tag, label), so the cost is O(devices + total group sizes), not
O(devices x groups) Python calls.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from inventory.models import Group, Inventory, Match

__all__ = [
    "Assignment",
    "Conflict",
    "Membership",
    "assign_groups",
    "group_members",
    "groups_of",
    "membership_of",
]

#: device id -> name of its winning group (only devices some group with ``agent`` covers)
Assignment = dict[str, str]


@dataclass(frozen=True)
class Membership:
    """The winning group of a device and that group's priority."""

    group: str
    priority: int


@dataclass(frozen=True)
class Conflict:
    """Two groups at the same top priority that disagree about some devices."""

    groups: tuple[str, str]
    priority: int
    devices: tuple[str, ...]
    differences: tuple[str, ...]


class _Index:
    """Device ids by platform, site, tag and label, built once per inventory."""

    def __init__(self, inventory: Inventory, selectors: Iterable[Match]) -> None:
        # Index only the values some selector asks for: most tags and labels of
        # a large fleet are never matched on.
        sites: set[str | None] = set()
        tags: set[str] = set()
        label_keys: set[str] = set()
        need_platform = False
        for m in selectors:
            need_platform = need_platform or m.platform is not None
            if m.site is not None:
                sites.update(m.site if isinstance(m.site, list) else [m.site])
            if m.tags is not None:
                tags.update(m.tags if isinstance(m.tags, list) else [m.tags])
            if m.labels is not None:
                label_keys.update(m.labels)
        self.platform: dict[str, set[str]] = defaultdict(set)
        self.site: dict[str | None, set[str]] = defaultdict(set)
        self.tag: dict[str, set[str]] = defaultdict(set)
        self.label: dict[tuple[str, str], set[str]] = defaultdict(set)
        for device_id, device in inventory.devices.items():
            if need_platform:
                self.platform[device.platform].add(device_id)
            if sites and device.site in sites:
                self.site[device.site].add(device_id)
            if tags and device.tags:
                for tag in device.tags:
                    if tag in tags:
                        self.tag[tag].add(device_id)
            if label_keys and device.labels:
                for key, value in device.labels.items():
                    if key in label_keys:
                        self.label[key, value].add(device_id)

    def select(self, match: Match) -> set[str]:
        """Ids of the devices ``match`` selects (an empty selector selects none)."""
        parts: list[set[str]] = []
        if match.platform is not None:
            values = match.platform if isinstance(match.platform, list) else [match.platform]
            parts.append(_union(self.platform.get(v) for v in values))
        if match.site is not None:
            sites = match.site if isinstance(match.site, list) else [match.site]
            parts.append(_union(self.site.get(s) for s in sites))
        if match.tags is not None:
            tags = match.tags if isinstance(match.tags, list) else [match.tags]
            parts.append(_union(self.tag.get(t) for t in tags))
        if match.labels is not None:
            for key, value in match.labels.items():
                values_ = value if isinstance(value, list) else [value]
                parts.append(_union(self.label.get((key, v)) for v in values_))
        if not parts:
            return set()
        parts.sort(key=len)
        result = set(parts[0])
        for part in parts[1:]:
            result &= part
        return result


def _union(sets: Iterable[set[str] | None]) -> set[str]:
    out: set[str] = set()
    for s in sets:
        if s:
            out |= s
    return out


def _members(inventory: Inventory, index: _Index, group: Group) -> set[str]:
    selected = index.select(group.match)
    if group.members:
        selected.update(m for m in group.members if m in inventory.devices)
    return selected


def group_members(inventory: Inventory) -> dict[str, set[str]]:
    """Every group's devices (selector matches plus explicit members)."""
    index = _Index(inventory, (g.match for g in inventory.groups.values()))
    return {name: _members(inventory, index, g) for name, g in inventory.groups.items()}


def _follows_channel(group: Group) -> bool:
    return group.agent is not None and group.agent.channel is not None


def _agent_text(group: Group) -> str:
    agent = group.agent
    if agent is None:
        return "release None"
    if agent.channel is not None:
        return f"channel {agent.channel} ({agent.release})"
    return f"release {agent.release}"


def _differences(a: Group, b: Group) -> tuple[str, ...]:
    out = []
    if a.agent != b.agent:
        if _follows_channel(a) or _follows_channel(b):
            out.append(f"{_agent_text(a)} vs {_agent_text(b)}")
        else:
            release_a = a.agent.release if a.agent else None
            release_b = b.agent.release if b.agent else None
            out.append(f"release {release_a} vs {release_b}")
    if a.rollout != b.rollout:
        out.append("rollout policy")
    if a.maintenance_window != b.maintenance_window:
        out.append("maintenance window")
    return tuple(out)


def assign_groups(inventory: Inventory) -> tuple[Assignment, list[Conflict]]:
    """Winning group of every device some group with ``agent`` covers, and the conflicts.

    Within one priority, groups that agree share devices without conflict (the
    first by name is recorded as the winner); groups that disagree are reported
    once per pair with every device they both claim.
    """
    managing = {n: g for n, g in inventory.groups.items() if g.agent is not None}
    index = _Index(inventory, (g.match for g in managing.values()))
    members = {n: _members(inventory, index, g) for n, g in managing.items()}
    assignment: Assignment = {}
    conflicts: list[Conflict] = []
    by_priority = sorted(managing.items(), key=lambda kv: (-kv[1].priority, kv[0]))
    for priority, level_iter in itertools.groupby(by_priority, key=lambda kv: kv[1].priority):
        level = list(level_iter)
        fresh = {name: members[name].difference(assignment) for name, _ in level}
        for (name_a, group_a), (name_b, group_b) in itertools.combinations(level, 2):
            differences = _differences(group_a, group_b)
            if not differences:
                continue
            both = fresh[name_a] & fresh[name_b]
            if both:
                conflicts.append(
                    Conflict((name_a, name_b), priority, tuple(sorted(both)), differences)
                )
        for name, _ in level:
            assignment.update(dict.fromkeys(fresh[name].difference(assignment), name))
    return assignment, conflicts


def membership_of(inventory: Inventory, assignment: Assignment, device: str) -> Membership | None:
    """The winning group of ``device`` with its priority, or None when unmanaged."""
    name = assignment.get(device)
    if name is None:
        return None
    return Membership(group=name, priority=inventory.groups[name].priority)


def groups_of(inventory: Inventory, device: str) -> list[str]:
    """Names of every group ``device`` belongs to (with or without ``agent``), by name."""
    target = inventory.devices.get(device)
    if target is None:
        return []
    return sorted(
        name
        for name, group in inventory.groups.items()
        if device in group.members or (not group.match.is_empty and group.match.matches(target))
    )
