"""The planner's per-device decision: which action a managed device needs, and why.

Pure like the planner (``engine.planner``), which calls ``Decider.decide``
once per device; outcomes are shared between devices in the same situation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory.models import Device
from states.manifest import ReleaseManifest
from states.plan import Action, Step
from states.report import Report

__all__ = [
    "NO_REPORT_REASON",
    "NO_STEPS",
    "STALE_REASON_PREFIX",
    "Decider",
    "Decision",
    "Outcome",
    "ReleaseView",
    "StepsOf",
]

#: The reason of a device without any report.
NO_REPORT_REASON = "no report from this device yet"
#: How the reason of a device whose last report is too old begins.
STALE_REASON_PREFIX = "no report since "


class ReleaseView(Protocol):
    """What the planner reads of a loaded release (``inventory.catalog.LoadedRelease``)."""

    @property
    def manifest(self) -> ReleaseManifest: ...
    @property
    def path(self) -> Path: ...
    @property
    def sha256(self) -> str: ...
    @property
    def signature_path(self) -> Path | None: ...


def _when(value: datetime) -> str:
    """``2026-11-30T10:00Z``: the minute, in UTC."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is twice as fast as strftime, and pads the year to four digits as
    # strftime does for every year from 1000 on.
    if value.year < 1000:
        return value.strftime("%Y-%m-%dT%H:%MZ")
    return f"{value.isoformat(timespec='minutes')[:16]}Z"


def _rollback_reason(
    current: Version,
    desired: Version,
    releases: Mapping[Version, ReleaseView],
    known_good: Version | None,
    why: str,
) -> str:
    base = f"{current} -> {desired} ({why})"
    current_release = releases.get(current)
    if current_release is not None and desired in current_release.manifest.rollback_to:
        return f"{base}; {current}'s manifest authorises rolling back to {desired}"
    if known_good is not None and known_good == desired:
        return f"{base}; restores the device's own known-good backup of {desired}"
    if current_release is None:
        return (
            f"{base}; {current} has no manifest under releases/, so nothing authorises "
            f"the rollback: devices refuse {desired} if its serial is lower than one seen"
        )
    return (
        f"{base}; not authorised: {current}'s manifest does not list {desired} in rollback_to, "
        f"devices refuse {desired} if its serial is lower than one seen"
    )


#: (action, reason, whether the device runs a transaction)
Outcome = tuple[Action, str, bool]
#: An outcome and the transaction's steps (empty unless the device runs one)
Decision = tuple[Action, str, bool, list[Step]]
#: The steps from a current release (None: nothing installed) to a desired one on a platform
StepsOf = Callable[[Version, Platform, Version | None], list[Step]]

#: The steps of every device that runs no transaction: one empty list, never changed.
NO_STEPS: list[Step] = []
_NO_REPORT: Decision = (Action.BLOCKED, NO_REPORT_REASON, False, NO_STEPS)


class Decider:
    """Decides each device's action, reason and steps (see ``plan_fleet``).

    Most devices share their (current, desired, platform, group) with many
    others, so the decision after the per-device checks (report present,
    fresh, right platform) is computed once per combination and reused: its
    steps list too (``steps_of`` is called once per combination that changes).
    """

    def __init__(
        self, releases: Mapping[Version, ReleaseView], stale_before: datetime, steps_of: StepsOf
    ) -> None:
        self.releases = releases
        self.stale_before = stale_before
        self.steps_of = steps_of
        self._decisions: dict[tuple[object, ...], Decision] = {}

    def decide(
        self,
        device: Device,
        report: Report | None,
        desired: Version,
        why: str,
        pinned_against: str | None,
    ) -> Decision:
        """Action, reason and steps of one managed device wanting ``desired``.

        ``pinned_against`` is the reason to use when the device sits on its pin
        while its group wants another release (None when that cannot happen).
        Devices in the same situation share one steps list: never change it.
        """
        if report is None:
            return _NO_REPORT
        if report.last_seen < self.stale_before:
            reason = f"{STALE_REASON_PREFIX}{_when(report.last_seen)}"
            return Action.BLOCKED, reason, False, NO_STEPS
        platform = device.platform
        if report.platform is not None and report.platform is not platform:
            return (
                Action.BLOCKED,
                f"device reports platform {report.platform.value} but the inventory says "
                f"{platform.value}",
                False,
                NO_STEPS,
            )
        current = report.agent_version
        known_good = report.known_good
        managed = report.runtime_version is not None
        key = (
            managed,
            None if current is None else current.text,
            desired.text,
            id(platform),  # Enum.__hash__ is Python code; the identity is enough here
            why,
            pinned_against,
            None if known_good is None else known_good.text,
        )
        decision = self._decisions.get(key)
        if decision is None:
            action, reason, changing = self._move(
                platform=platform,
                current=current,
                known_good=known_good,
                desired=desired,
                why=why,
                pinned_against=pinned_against,
                managed=managed,
            )
            steps = self.steps_of(desired, platform, current) if changing else NO_STEPS
            decision = self._decisions[key] = (action, reason, changing, steps)
        return decision

    def _move(
        self,
        *,
        platform: Platform,
        current: Version | None,
        known_good: Version | None,
        desired: Version,
        why: str,
        pinned_against: str | None,
        managed: bool,
    ) -> Outcome:
        if current is not None and current == desired:
            if pinned_against is not None:
                return Action.PINNED, pinned_against, False
            if managed:
                return Action.NOOP, f"already on {desired}", False
        release = self.releases.get(desired)
        if release is None:
            return Action.BLOCKED, f"release {desired} has no manifest under releases/", False
        if platform not in release.manifest.platforms:
            return Action.BLOCKED, f"release {desired} has no artifact for {platform.value}", False
        if current == desired:
            # A report without a runtime version comes from elsewhere (an export of
            # the system already in the field): the files are there, but nothing has
            # verified them yet; the runtime's first result will.
            return Action.ADOPT, f"{desired} in place, no runtime yet: adopt it ({why})", True
        if current is None:
            return Action.INSTALL, f"no agent installed; install {desired} ({why})", True
        if current < desired:
            return Action.UPDATE, f"{current} -> {desired} ({why})", True
        reason = _rollback_reason(current, desired, self.releases, known_good, why)
        return Action.ROLLBACK, reason, True
