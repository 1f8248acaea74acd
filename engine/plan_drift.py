"""Drift: what changed in the fleet between a saved plan and a plan of the same inputs now.

``terraform apply`` shows how the real world moved since the plan and still
applies it; so does ``engine apply``. :func:`plan_drift` compares the saved
plan with a fresh plan of the same operator repo, device by device: devices
that moved to another version, appeared (reported for the first time), or
went silent (their last report is now too old), or changed otherwise (what
their runtime can do, ADR 0024), and devices whose action the plan would now
decide differently (what ``--strict`` refuses); runtime plans too. Pure: no IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from engine._plan_decide import NO_REPORT_REASON, STALE_REASON_PREFIX
from states.plan import AGENT, RUNTIME, DevicePlan, Plan

__all__ = ["DeviceDrift", "Drift", "DriftKind", "plan_drift"]


class DriftKind(StrEnum):
    """How a device changed since the plan."""

    MOVED = "moved"  # reports another version than when the plan was made
    APPEARED = "appeared"  # had no report then, has one now
    SILENT = "silent"  # reported then, its last report is too old now
    CHANGED = "changed"  # same version, but what it reported since changes its plan


@dataclass(frozen=True)
class DeviceDrift:
    """One device that changed since the plan; ``changes_plan`` when its action would differ."""

    device: str
    kind: DriftKind
    then: str  # its version then ("none" without an agent or report)
    now: str
    action_then: str
    action_now: str
    component: str = AGENT  # or RUNTIME: its runtime plan drifted

    @property
    def changes_plan(self) -> bool:
        """True when a plan made now would do something else to this device."""
        return self.action_then != self.action_now

    def describe(self) -> str:
        """One line for people, e.g. ``srv-0001 moved 3.0.0 -> 3.0.1 (update -> noop)``."""
        what = " runtime" if self.component == RUNTIME else ""
        text = f"{self.device}{what} {self.kind.value}"
        if self.kind not in (DriftKind.SILENT, DriftKind.CHANGED) or self.then != self.now:
            text += f" {self.then} -> {self.now}"
        if self.changes_plan:
            text += f" (plan: {self.action_then}, now: {self.action_now})"
        return text


@dataclass(frozen=True)
class Drift:
    """Every device that changed since the plan, in device order."""

    devices: list[DeviceDrift] = field(default_factory=list)

    @property
    def changes_plan(self) -> list[DeviceDrift]:
        """The drifted devices whose action a plan made now would change."""
        return [d for d in self.devices if d.changes_plan]

    def counts(self) -> dict[str, int]:
        """How many devices drifted, by kind (kinds without devices left out)."""
        found: dict[str, int] = {}
        for d in self.devices:
            found[d.kind.value] = found.get(d.kind.value, 0) + 1
        return found


def _version(device: DevicePlan) -> str:
    return "none" if device.current is None else device.current.text


def _action(device: DevicePlan) -> str:
    desired = "" if device.desired is None else f" {device.desired.text}"
    return f"{device.action.value}{desired}"


def _kind(then: DevicePlan, now: DevicePlan) -> DriftKind | None:
    silent_then = then.reason.startswith(STALE_REASON_PREFIX)
    silent_now = now.reason.startswith(STALE_REASON_PREFIX)
    if then.reason == NO_REPORT_REASON and now.reason != NO_REPORT_REASON:
        return DriftKind.APPEARED
    if silent_now and not silent_then:
        return DriftKind.SILENT
    if then.current != now.current:
        return DriftKind.MOVED
    if then.action is not now.action:
        return DriftKind.CHANGED
    return None


def plan_drift(saved: Plan, fresh: Plan) -> Drift:
    """How the fleet drifted between ``saved`` and ``fresh`` (the same inputs, later reports)."""
    before = {(d.component, d.device): d for d in (*saved.devices, *saved.runtime_devices)}
    found: list[DeviceDrift] = []
    for now in (*fresh.devices, *fresh.runtime_devices):
        then = before.get((now.component, now.device))
        if then is None:
            continue
        kind = _kind(then, now)
        if kind is None:
            continue
        found.append(
            DeviceDrift(
                device=now.device,
                kind=kind,
                then=_version(then),
                now=_version(now),
                action_then=_action(then),
                action_now=_action(now),
                component=now.component,
            )
        )
    return Drift(sorted(found, key=lambda d: (d.device, d.component)))
