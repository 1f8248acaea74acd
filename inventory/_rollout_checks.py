"""Checks that need the whole rollout in view: who is in each group, what each release covers.

Run by the loader once groups are assigned. Errors: a ``rollout.after`` that
names a group without devices or on an older release (the gate would be
skipped, and the fleet would go without its canary; a gate already ahead, on
a newer release, is the usual "canary first" step), and a platform among a
group's devices that its release has no artifact for. Warnings: a group that
matches no device, with the near-misses that explain why ("tag `canry`
matches nothing; 2 devices have `canary`"), and a group naming a release whose
manifest has expired (devices refuse it; `engine apply` refuses to roll it out).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

from fleetbase.clock import utc_text
from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory._checks import Origin
from inventory.catalog import LoadedRelease
from inventory.errors import Problem
from inventory.membership import Assignment
from inventory.models import Device, Group, Inventory, Match

__all__ = [
    "check_gate_groups",
    "check_platforms",
    "empty_group_warnings",
    "expired_release_warnings",
    "near_misses",
]


def _values(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _closest(wanted: str, counts: Mapping[str, int], noun: str, what: str) -> str:
    close = difflib.get_close_matches(wanted, list(counts), n=1, cutoff=0.6)
    if not close:
        return f"{noun} `{wanted}` matches nothing; no device has a similar {what}"
    n = counts[close[0]]
    have = "1 device has" if n == 1 else f"{n} devices have"
    return f"{noun} `{wanted}` matches nothing; {have} `{close[0]}`"


def near_misses(match: Match, devices: Iterable[Device]) -> list[str]:
    """Why ``match`` selects no device: each value no device has, with the closest one some do.

    When every value alone selects devices, says that no device has all of them.
    """
    fleet = list(devices)
    found: list[str] = []
    if match.platform is not None:
        platforms = match.platform if isinstance(match.platform, list) else [match.platform]
        present = {d.platform for d in fleet}
        if not present.intersection(platforms):
            names = ", ".join(p.value for p in platforms)
            found.append(f"platform `{names}` matches nothing; no device runs it")
    sites = Counter(d.site for d in fleet if d.site is not None)
    if match.site is not None and not any(s in sites for s in _values(match.site)):
        found.extend(_closest(s, sites, "site", "site") for s in _values(match.site))
    tags = Counter(t for d in fleet for t in set(d.tags))
    if match.tags is not None and not any(t in tags for t in _values(match.tags)):
        found.extend(_closest(t, tags, "tag", "tag") for t in _values(match.tags))
    for key, value in (match.labels or {}).items():
        values = Counter(d.labels[key] for d in fleet if key in d.labels)
        wanted = _values(value)
        if not any(v in values for v in wanted):
            if not values:
                found.append(f"label `{key}` matches nothing; no device has that label")
            else:
                found.extend(_closest(v, values, f"label {key}", "value") for v in wanted)
    if not found and not match.is_empty:
        found.append("each key matches some devices, but no device matches all of them")
    return found


def _why_empty(group: Group, devices: Iterable[Device]) -> str:
    if group.match.is_empty and not group.members:
        return "its match is empty and it lists no members"
    return "; ".join(near_misses(group.match, devices))


def _has_device(group: Group, inventory: Inventory) -> bool:
    if any(m in inventory.devices for m in group.members):
        return True
    if group.match.is_empty:
        return False
    return any(group.match.matches(d) for d in inventory.devices.values())


def empty_group_warnings(
    inventory: Inventory, origin: Origin, assignment: Assignment
) -> list[Problem]:
    """One warning per group that matches no device, with the near-misses.

    A group that wins some device is not looked at again; for the others the
    scan stops at the first device they select.
    """
    winners = set(assignment.values())
    out: list[Problem] = []
    for name, group in sorted(inventory.groups.items()):
        if name in winners or _has_device(group, inventory):
            continue
        why = _why_empty(group, inventory.devices.values())
        out.append(
            origin.group[name].problem(("groups", name, "match"), f"matches no device: {why}")
        )
    return out


def expired_release_warnings(
    inventory: Inventory,
    origin: Origin,
    releases: Mapping[Version, LoadedRelease],
    now: datetime,
) -> list[Problem]:
    """One warning per group that names (``agent.release``) a release whose manifest expired.

    Devices refuse an expired manifest, so the group's devices not on it yet
    cannot move (`engine apply` refuses to record that). Not an error: devices
    already running the release keep running it. Groups following a channel
    never resolve to an expired release.
    """
    out: list[Problem] = []
    for name, group in sorted(inventory.groups.items()):
        agent = group.agent
        if agent is None or agent.channel is not None or agent.release is None:
            continue
        loaded = releases.get(agent.release)
        if loaded is None or loaded.manifest.expires > now:
            continue
        when = utc_text(loaded.manifest.expires)
        out.append(
            origin.group[name].problem(
                ("groups", name, "agent", "release"),
                f"the manifest of release {agent.release} (releases/{loaded.path.name}) expired "
                f"at {when}: devices refuse to install it and `engine apply` will not roll it "
                "out; release a new version or re-sign it with a later `expires`",
                at_value=True,
            )
        )
    return out


def check_gate_groups(
    inventory: Inventory,
    origin: Origin,
    assignment: Assignment,
    problems: list[Problem],
) -> None:
    """``rollout.after`` names groups with devices, on the group's release or a newer one."""
    assigned = Counter(assignment.values())
    for name, group in inventory.groups.items():
        if group.agent is None:
            continue
        for i, gate_name in enumerate(group.rollout.after):
            gate = inventory.groups.get(gate_name)
            if gate is None or gate.agent is None or gate_name == name:
                continue  # check_after reports these
            path = ("groups", name, "rollout", "after", i)
            if gate.agent.release is None or group.agent.release is None:
                continue  # a channel that did not resolve, reported already
            if gate.agent.release < group.agent.release:
                problems.append(
                    origin.group[name].problem(
                        path,
                        f"group {gate_name!r} runs release {gate.agent.release}, older than "
                        f"{group.agent.release}: {name!r} would roll out {group.agent.release} "
                        f"without waiting for it (after waits for a rollout of the same "
                        f"release); move {gate_name!r} to {group.agent.release} first or with it",
                        at_value=True,
                    )
                )
            elif assigned[gate_name] == 0:
                why = (
                    "each of its devices belongs to a group of higher priority"
                    if _has_device(gate, inventory)
                    else _why_empty(gate, inventory.devices.values())
                )
                problems.append(
                    origin.group[name].problem(
                        path,
                        f"group {gate_name!r} has no devices ({why}): {name!r} would roll "
                        f"out {group.agent.release} without waiting for it",
                        at_value=True,
                    )
                )


def check_platforms(
    inventory: Inventory,
    origin: Origin,
    releases: Mapping[Version, LoadedRelease],
    assignment: Assignment,
    problems: list[Problem],
) -> None:
    """Every platform among a group's devices has an artifact in the group's release.

    Pinned devices do not take the group's release. A group whose ``match``
    limits its platforms is not held to devices of other platforms it lists
    as ``members``: the operator chose to leave those blocked.
    """
    # Only groups whose release lacks some platform can miss one: skip the
    # fleet-wide pass when there are none (the usual case).
    partial = {
        name
        for name, group in inventory.groups.items()
        if group.agent is not None
        and group.agent.release is not None
        and (loaded := releases.get(group.agent.release)) is not None
        and len(loaded.manifest.platforms) < len(Platform)
    }
    if not partial:
        return
    missing: dict[tuple[str, Platform], list[str]] = {}
    for device_id, group_name in assignment.items():
        if group_name not in partial:
            continue
        group = inventory.groups[group_name]
        device = inventory.devices[device_id]
        if group.agent is None or group.agent.release is None or device.pin is not None:
            continue
        loaded = releases.get(group.agent.release)
        if loaded is None or device.platform in loaded.manifest.platforms:
            continue
        limit = group.match.platform
        if limit is not None:
            allowed = limit if isinstance(limit, list) else [limit]
            if device.platform not in allowed:
                continue
        missing.setdefault((group_name, device.platform), []).append(device_id)
    for (group_name, platform), devices in sorted(missing.items()):
        group = inventory.groups[group_name]
        assert group.agent is not None and group.agent.release is not None
        release = group.agent.release
        channel = group.agent.channel
        key = "release" if channel is None else "channel"
        via = "" if channel is None else f" (channel {channel})"
        covered = ", ".join(sorted(p.value for p in releases[release].manifest.platforms))
        n = len(devices)
        problems.append(
            origin.group[group_name].problem(
                ("groups", group_name, "agent", key),
                f"release {release}{via} has no artifact for {platform.value}, but {n} of the "
                f"group's devices run{'s' if n == 1 else ''} "
                f"{platform.value} (e.g. {sorted(devices)[0]}): add {platform.value} files "
                f"to releases/{release}.yaml, or limit the group with "
                f"match: {{platform: [{covered}]}}",
                at_value=True,
            )
        )
