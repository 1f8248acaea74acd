"""Feature flags: each device's effective flags, and checking them against release schemas.

A group's ``flags`` apply to its devices; a device's own ``flags`` win key by
key. Each flag must be declared by the release the device will run (its
manifest's ``flags``) with a value of the declared type; a flag the release
does not know is an error, never silently ignored. Undeclared values take the
schema's default.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetbase.version import Version
from inventory._checks import Origin
from inventory.catalog import LoadedRelease
from inventory.errors import Problem
from inventory.membership import Assignment
from inventory.models import Device, Group, Inventory
from states.config_bundle import FlagValue
from states.manifest import FlagSpec, flag_type_problem

__all__ = ["check_flags", "desired_release", "effective_flags", "flag_problem", "wanted_flags"]


def wanted_flags(device: Device, group: Group | None) -> dict[str, FlagValue]:
    """The flags the inventory sets for ``device``: its group's, overridden by its own."""
    if group is None or not group.flags:
        return dict(device.flags)
    return {**group.flags, **device.flags}


def effective_flags(
    wanted: Mapping[str, FlagValue], schema: Mapping[str, FlagSpec]
) -> dict[str, FlagValue]:
    """Every flag of ``schema`` with its value: the wanted one, else the default.

    Int values of float flags become floats. Names outside the schema are
    dropped (``check_flags`` refuses them before this runs).
    """
    out: dict[str, FlagValue] = {}
    for name, spec in sorted(schema.items()):
        value = wanted.get(name, spec.default)
        if spec.type.value == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def flag_problem(name: str, value: FlagValue, release: LoadedRelease, others: str) -> str | None:
    """Why flag ``name`` = ``value`` is wrong for ``release`` (None when it is fine).

    ``others`` names releases that do know the flag, for the message.
    """
    manifest = release.manifest
    spec = manifest.flags.get(name)
    version = manifest.version
    if spec is None:
        known = ", ".join(sorted(manifest.flags)) or "none"
        hint = f"; {others} declare it" if others else ""
        return f"flag {name!r} is unknown to release {version} (its flags: {known}){hint}"
    if spec.since is not None and version < spec.since:
        return f"flag {name!r} exists from agent version {spec.since} on, not in {version}"
    problem = flag_type_problem(spec.type, value)
    if problem is not None:
        return f"flag {name!r}: value {problem}"
    return None


def desired_release(device: Device, group: Group | None) -> Version | None:
    """The release ``device`` will run: its pin, else its group's release."""
    if device.pin is not None:
        return device.pin
    if group is not None and group.agent is not None:
        return group.agent.release
    return None


def _declaring(name: str, releases: Mapping[Version, LoadedRelease]) -> str:
    versions = sorted(v for v, r in releases.items() if name in r.manifest.flags)
    return ", ".join(str(v) for v in versions)


def check_flags(
    inventory: Inventory,
    origin: Origin,
    releases: Mapping[Version, LoadedRelease],
    assignment: Assignment,
    problems: list[Problem],
) -> None:
    """Add a problem, at the flag's key, for each flag a device's release does not accept."""
    for name, group in inventory.groups.items():
        wanted = group.agent.release if group.agent is not None else None
        if not group.flags or wanted is None:
            continue
        release = releases.get(wanted)
        if release is None:
            continue  # reported by the release reference check
        for flag, value in group.flags.items():
            why = flag_problem(flag, value, release, _declaring(flag, releases))
            if why is not None:
                problems.append(origin.group[name].problem(("groups", name, "flags", flag), why))
    for device_id, device in inventory.devices.items():
        if not device.flags:
            continue
        group_name = assignment.get(device_id)
        member_of = inventory.groups.get(group_name) if group_name is not None else None
        version = desired_release(device, member_of)
        release = releases.get(version) if version is not None else None
        if release is None:
            continue
        for flag, value in device.flags.items():
            why = flag_problem(flag, value, release, _declaring(flag, releases))
            if why is not None:
                problems.append(
                    origin.device[device_id].problem(("devices", device_id, "flags", flag), why)
                )
