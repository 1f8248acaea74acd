"""Checks across the files of the operator repo, after each file is valid on its own.

Merging the inventory files (a device or group defined twice), references
(group members, releases, pins), ``rollout.after`` (names, cycles) and groups
that tie on priority but disagree. Every problem names the file and key that
caused it; ``inventory.loader`` collects them all before it raises.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from fleetbase.version import Version
from inventory.catalog import LoadedRelease
from inventory.errors import Problem
from inventory.membership import Conflict
from inventory.models import Device, Group, Inventory, InventoryFile
from inventory.sources import SourceFile, suggest

__all__ = ["Origin", "check_after", "check_references", "conflict_problems", "merge_files"]


@dataclass
class Origin:
    """Which file defined each device and group (for positions in later checks)."""

    device: dict[str, SourceFile]
    group: dict[str, SourceFile]


def merge_files(
    files: list[tuple[SourceFile, InventoryFile]], problems: list[Problem]
) -> tuple[dict[str, Device], dict[str, Group], Origin]:
    """Devices and groups of all files, and where each came from; a second definition of an
    id or name is a problem (the first one is kept)."""
    devices: dict[str, Device] = {}
    groups: dict[str, Group] = {}
    origin = Origin({}, {})
    for source, parsed in files:
        clash = parsed.devices.keys() & devices.keys() if devices else set()
        for device_id in sorted(clash):
            first = origin.device[device_id]
            problems.append(
                source.problem(
                    ("devices", device_id),
                    f"device {device_id!r} is defined twice: "
                    f"also at {first.where(('devices', device_id))}",
                )
            )
        fresh = (
            {k: v for k, v in parsed.devices.items() if k not in clash}  # keep the first
            if clash
            else parsed.devices
        )
        devices.update(fresh)
        origin.device.update(dict.fromkeys(fresh, source))
        for name, group in parsed.groups.items():
            if name in groups:
                first = origin.group[name]
                problems.append(
                    source.problem(
                        ("groups", name),
                        f"group {name!r} is defined twice: also at {first.where(('groups', name))}",
                    )
                )
                continue
            groups[name] = group
            origin.group[name] = source
    return devices, groups, origin


def check_references(
    inventory: Inventory,
    origin: Origin,
    releases: dict[Version, LoadedRelease],
    problems: list[Problem],
    *,
    devices_complete: bool,
    unloadable_releases: set[str],
) -> None:
    """Group members name devices; group releases and pins name releases in releases/.

    ``devices_complete`` False (a file failed to load) skips "not a device"; a
    release in ``unloadable_releases`` exists but is broken, reported elsewhere.
    """
    known = ", ".join(str(v) for v in sorted(releases)) or "none (releases/ is empty)"
    for name, group in inventory.groups.items():
        source = origin.group[name]
        for i, member in enumerate(group.members):
            if devices_complete and member not in inventory.devices:
                problems.append(
                    source.problem(
                        ("groups", name, "members", i),
                        f"{member!r} is not a device" + _suggest_device(member, inventory.devices),
                        at_value=True,
                    )
                )
        if (
            group.agent is not None
            and group.agent.release is not None  # None: a channel that did not resolve
            and group.agent.release not in releases
            and str(group.agent.release) not in unloadable_releases
        ):
            problems.append(
                source.problem(
                    ("groups", name, "agent", "release"),
                    f"release {group.agent.release} is not in releases/ (known: {known})",
                    at_value=True,
                )
            )
    for device_id, device in inventory.devices.items():
        if (
            device.pin is not None
            and device.pin not in releases
            and str(device.pin) not in unloadable_releases
        ):
            problems.append(
                origin.device[device_id].problem(
                    ("devices", device_id, "pin"),
                    f"pin {device.pin} names no release in releases/ (known: {known})",
                    at_value=True,
                )
            )


def check_after(
    inventory: Inventory, origin: Origin, problems: list[Problem], *, groups_complete: bool
) -> None:
    """``rollout.after``: every name a group with a release, not the group itself, no cycle."""
    groups = inventory.groups
    edges: dict[str, list[str]] = {}
    for name, group in groups.items():
        after = group.rollout.after
        if not after:
            continue
        source = origin.group[name]
        valid: list[str] = []
        for i, other in enumerate(after):
            path = ("groups", name, "rollout", "after", i)
            if other == name:
                problems.append(
                    source.problem(
                        path, f"group {name!r} cannot wait for its own rollout", at_value=True
                    )
                )
            elif other not in groups:
                if groups_complete:
                    problems.append(
                        source.problem(
                            path,
                            f"{other!r} is not a group" + suggest(other, sorted(groups)),
                            at_value=True,
                        )
                    )
            elif groups[other].agent is None:
                problems.append(
                    source.problem(
                        path,
                        f"group {other!r} has no agent release, nothing to wait for",
                        at_value=True,
                    )
                )
                valid.append(other)
            else:
                valid.append(other)
        edges[name] = valid
    for cycle in _after_cycles(edges):
        start, following = cycle[0], cycle[1]
        index = groups[start].rollout.after.index(following)
        problems.append(
            origin.group[start].problem(
                ("groups", start, "rollout", "after", index),
                f"groups wait for each other in a cycle: {' -> '.join(cycle)}; "
                "none of their rollouts would ever start",
                at_value=True,
            )
        )


def _after_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per set of groups that wait for each other, from its first name back to it."""
    reach: dict[str, set[str]] = {}
    for start, targets in edges.items():
        seen: set[str] = set()
        todo = list(targets)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        reach[start] = seen
    cycles: list[list[str]] = []
    done: set[str] = set()
    for start in sorted(edges):
        if start in done or start not in reach[start]:
            continue
        component = {n for n in reach[start] if start in reach.get(n, set())}
        done |= component
        # the shortest way from start back to itself inside its component
        back: dict[str, str] = {}
        queue = deque([start])
        while queue and start not in back:
            node = queue.popleft()
            for nxt in sorted(edges.get(node, ())):
                if nxt in component and nxt not in back:
                    back[nxt] = node
                    queue.append(nxt)
        chain = [back[start]]  # predecessors of start, walking backwards
        while chain[-1] != start:
            chain.append(back[chain[-1]])
        cycles.append([start, *reversed(chain[:-1]), start])
    return cycles


def _suggest_device(name: str, devices: dict[str, Device]) -> str:
    import difflib

    if len(devices) > 20000:
        return ""  # difflib over a huge fleet costs more than the hint is worth
    close = difflib.get_close_matches(name, list(devices), n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


def conflict_problems(conflicts: list[Conflict], origin: Origin) -> list[Problem]:
    """One problem per pair of groups that tie on priority, match a device and disagree."""
    out = []
    for conflict in conflicts:
        name_a, name_b = conflict.groups
        source_a = origin.group[name_a]
        source_b = origin.group[name_b]
        first = conflict.devices[0]
        more = len(conflict.devices) - 1
        also = f" (and {more} more device{'s' if more != 1 else ''})" if more else ""
        out.append(
            source_a.problem(
                ("groups", name_a),
                f"groups {name_a!r} ({source_a.where(('groups', name_a))}) and {name_b!r} "
                f"({source_b.where(('groups', name_b))}) both have priority "
                f"{conflict.priority} and both match device {first!r}{also}, but disagree "
                f"on {', '.join(conflict.differences)}: give one a higher priority",
            )
        )
    return out
