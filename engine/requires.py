"""Checking a release's ``requires:`` against what a device reported.

The planner blocks a device whose facts do not meet its desired release's
requirements, or that did not report a fact a requirement needs; the
controller offers a waiting device its update once its reported runtime
version meets the requirement (``runtime_satisfies``). Specifiers follow
Python packaging (``states.requires``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version

from engine._plan_decide import ReleaseView
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.plan import Action, DevicePlan
from states.report import Report
from states.requires import Requirements

__all__ = [
    "RequirementsCheck",
    "Unmet",
    "naming_runtime_rollouts",
    "reported_version",
    "runtime_satisfies",
    "unmet_requirements",
]

# The leading dotted numbers of a version some tool prints, e.g. 6.1.0 of the kernel
# release 6.1.0-18-amd64, 1.1.1 of OpenSSL's 1.1.1w.
_LEADING = re.compile(r"v?([0-9]+(?:\.[0-9]+)*)", re.ASCII)
#: How a plan says that a device waits for its runtime (with no runtime rollout to name).
_WAITS = "; waits in the rollout until its runtime reports a version that meets it"


@lru_cache(maxsize=256)
def _specifier(text: str) -> SpecifierSet:
    return SpecifierSet(text)


@lru_cache(maxsize=1024)
def reported_version(text: str) -> Pep440Version | None:
    """A reported version as packaging compares it, or None when it is none.

    Text packaging does not read as a version is compared by its leading
    dotted numbers (``6.1.0-18-amd64`` as 6.1.0, ``1.1.1w`` as 1.1.1).
    """
    try:
        return Pep440Version(text)
    except InvalidVersion:
        pass
    m = _LEADING.match(text.strip())
    return None if m is None else Pep440Version(m.group(1))


def _meets(spec: str, value: str) -> bool | None:
    """Whether ``value`` satisfies ``spec``; None when ``value`` is not a version.

    Pre-releases count (a device runs what it runs).
    """
    version = reported_version(value)
    if version is None:
        return None
    return _specifier(spec).contains(version, prereleases=True)


def runtime_satisfies(spec: str, runtime_version: str | None) -> bool:
    """Whether a device reporting ``runtime_version`` meets the runtime requirement ``spec``."""
    return runtime_version is not None and _meets(spec, runtime_version) is True


@dataclass(frozen=True)
class Unmet:
    """The requirements a device does not meet, each said as a reason.

    ``awaits_runtime`` is the runtime requirement when it is the only one the
    device fails and its runtime reported a version (too old): the device can
    wait for its runtime to get there. None otherwise.
    """

    reasons: tuple[str, ...]
    awaits_runtime: str | None = None

    def reason(self, release: str) -> str:
        """One line for a plan: what ``release`` needs that the device lacks."""
        text = f"release {release} " + "; ".join(self.reasons)
        if self.awaits_runtime is not None:
            text += _WAITS
        return text


def _check(what: str, spec: str, value: str | None, lacking: str) -> str | None:
    if value is None:
        return f"needs {what} {spec}, but the runtime did not report {lacking}"
    met = _meets(spec, value)
    if met is None:
        return f"needs {what} {spec}, but the runtime reported {value!r}, which is not a version"
    return None if met else f"needs {what} {spec}, has {value}"


def unmet_requirements(requires: Requirements, platform: Platform, report: Report) -> Unmet | None:
    """What of ``requires`` the device of ``report`` (on ``platform``) lacks, or None."""
    reasons: list[str] = []
    runtime_reason: str | None = None
    if requires.runtime is not None:
        runtime_reason = _check("runtime", requires.runtime, report.runtime_version, "its version")
        if runtime_reason is not None:
            reasons.append(runtime_reason)
    if requires.python is not None:
        found = _check("python", requires.python, report.python_version, "its python version")
        if found is not None:
            reasons.append(found)
    os_spec = requires.os.get(platform)
    if os_spec is not None:
        found = _check(platform.value, os_spec, report.os_version, "its os version")
        if found is not None:
            reasons.append(found)
    reported: Mapping[str, str] = report.components or {}
    for name, spec in requires.components.items():
        lacking = f"component {name}" if report.components is not None else "its components"
        found = _check(name, spec, reported.get(name), lacking)
        if found is not None:
            reasons.append(found)
    if not reasons:
        return None
    waits = (
        requires.runtime
        if reasons == [runtime_reason]
        and report.runtime_version is not None
        and reported_version(report.runtime_version) is not None
        else None
    )
    return Unmet(tuple(reasons), waits)


class RequirementsCheck:
    """``unmet_requirements`` of each device's desired release, shared between devices that
    report the same facts (the planner calls ``check`` once per changing device)."""

    def __init__(self, releases: Mapping[Version, ReleaseView]) -> None:
        self.releases = releases
        #: whether some release has requirements (when none has, no device needs a check)
        self.any = any(r.manifest.requires is not None for r in releases.values())
        self._requires: dict[str, Requirements | None] = {}  # by the desired version's text
        self._found: dict[tuple[object, ...], Unmet | None] = {}

    def check(self, desired: Version, platform: Platform, report: Report) -> Unmet | None:
        """What the device of ``report`` lacks for ``desired``, or None (also for a release
        without requirements or without a manifest)."""
        text = desired.text
        if text in self._requires:
            requires = self._requires[text]
        else:
            release = self.releases.get(desired)
            requires = self._requires[text] = None if release is None else release.manifest.requires
        if requires is None:
            return None
        components = report.components
        # Only the components the release names matter (a lookup or two, not a sort).
        key = (
            text,
            id(platform),  # Enum.__hash__ is Python code; the identity is enough here
            report.runtime_version,
            report.python_version,
            report.os_version,
            None
            if components is None
            else tuple([components.get(name) for name in requires.components]),
        )
        if key in self._found:
            return self._found[key]
        found = self._found[key] = unmet_requirements(requires, platform, report)
        return found


def naming_runtime_rollouts(
    records: Iterable[dict[str, Any]], runtime_plans: Iterable[DevicePlan]
) -> None:
    """Say in the reason of each waiting device record (``awaits_runtime``) which runtime
    release will meet its requirement, when the same plan moves its runtime to one: "waits
    for runtime 0.2.0 (rollout lab@runtime-0.2.0)". Changes the records in place."""
    moving = {
        p.device: p
        for p in runtime_plans
        if p.action in (Action.UPDATE, Action.ROLLBACK) and p.rollout is not None
    }
    if not moving:
        return
    for record in records:
        spec = record["awaits_runtime"]
        runtime = None if spec is None else moving.get(record["device"])
        if runtime is None or not runtime_satisfies(spec, str(runtime.desired)):
            continue
        reason: str = record["reason"]
        record["reason"] = reason.removesuffix(_WAITS) + (
            f"; waits for runtime {runtime.desired} (rollout {runtime.rollout})"
        )
