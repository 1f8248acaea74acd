"""The planner's runtime part: groups with ``runtime: {release: V}`` move their devices'
runtime to a runtime release, in rollouts of their own (``group@runtime-V``).

Pure like the planner (``engine.planner`` calls ``plan_runtimes`` once): the
device plans go to ``Plan.runtime_devices`` (``component: runtime``), the
rollouts to ``Plan.rollouts`` beside the agent's, with the group's waves.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from engine._plan_decide import NO_REPORT_REASON, STALE_REASON_PREFIX
from engine.capabilities import NOT_SUPERVISED_REASON, lacks_feature
from engine.waves import wave_indices
from fleetbase.version import Version, VersionError
from inventory.models import Inventory
from states.plan import RUNTIME, Action, DevicePlan, RolloutPlan, WavePlan
from states.protocol import FEATURE_RUNTIME_UPDATE
from states.report import Report

__all__ = ["plan_runtimes", "runtime_rollout_id"]


def runtime_rollout_id(group: str, release: Version) -> str:
    """The stable id of a group moving its runtime to a release, e.g. ``lab@runtime-0.2.0``."""
    return f"{group}@runtime-{release}"


def _decide(
    report: Report | None,
    desired: Version,
    known: Collection[Version] | None,
    stale_before: datetime,
) -> tuple[Action, str, Version | None]:
    """(action, reason, current runtime version) of one device of a group with ``runtime:``."""
    if report is None:
        return Action.BLOCKED, NO_REPORT_REASON, None
    if report.last_seen < stale_before:
        stamp = report.last_seen.strftime("%Y-%m-%dT%H:%MZ")
        return Action.BLOCKED, f"{STALE_REASON_PREFIX}{stamp}", None
    if report.runtime_version is None:
        return Action.BLOCKED, "no runtime reports from this device yet", None
    try:
        current = Version(report.runtime_version)
    except VersionError:
        return Action.BLOCKED, f"runtime version {report.runtime_version!r} is not a version", None
    if current == desired:
        return Action.NOOP, f"runtime already on {desired}", current
    if known is not None and desired not in known:
        return (
            Action.BLOCKED,
            f"runtime release {desired} has no bundles under runtime-releases/",
            current,
        )
    if lacks_feature(report, FEATURE_RUNTIME_UPDATE):
        return Action.BLOCKED, NOT_SUPERVISED_REASON, current
    if current < desired:
        return Action.UPDATE, f"runtime {current} -> {desired}", current
    return Action.ROLLBACK, f"runtime {current} -> {desired} (an older runtime release)", current


def plan_runtimes(
    inventory: Inventory,
    assignment: Mapping[str, str],
    reports: Mapping[str, Report],
    *,
    known: Collection[Version] | None,
    stale_before: datetime,
) -> tuple[list[DevicePlan], list[RolloutPlan]]:
    """Each device's runtime plan and each group's runtime rollout.

    ``known`` is the set of runtime releases there are (None: not checked).
    Waves are the group's rollout waves, computed on the whole group.
    """
    by_group: dict[str, list[tuple[DevicePlan, bool]]] = {}
    moving = {name for name, group in inventory.groups.items() if group.runtime is not None}
    if not moving:
        return [], []
    for device_id, device in inventory.devices.items():
        group_name = assignment.get(device_id)
        if group_name is None or group_name not in moving:
            continue
        group = inventory.groups[group_name]
        assert group.runtime is not None
        desired = group.runtime.release
        action, reason, current = _decide(reports.get(device_id), desired, known, stale_before)
        values: dict[str, Any] = {
            "device": device_id,
            "group": group_name,
            "platform": device.platform,
            "current": current,
            "desired": desired,
            "action": action,
            "reason": reason,
            "component": RUNTIME,
        }
        moves = action in (Action.UPDATE, Action.ROLLBACK)
        by_group.setdefault(str(group_name), []).append((DevicePlan(**values), moves))
    plans: list[DevicePlan] = []
    rollouts: list[RolloutPlan] = []
    for name in sorted(by_group):
        group = inventory.groups[name]
        assert group.runtime is not None
        release = group.runtime.release
        rid = runtime_rollout_id(name, release)
        entries = by_group[name]
        policy = group.rollout
        indices = wave_indices(
            name, [p.device for p, _ in entries], [c for _, c in entries], policy.waves
        )
        per_wave = [0] * len(policy.waves)
        changing = [0] * len(policy.waves)
        for (plan, is_changing), index in zip(entries, indices, strict=True):
            plans.append(plan.model_copy(update={"wave": index, "rollout": rid}))
            per_wave[index] += 1
            changing[index] += is_changing
        window = group.maintenance_window
        rollouts.append(
            RolloutPlan(
                id=rid,
                group=name,
                release=release,
                policy=policy.model_dump(mode="json", exclude_none=True),
                maintenance_window=window.model_dump(mode="json") if window else None,
                waves=[
                    WavePlan(index=i, percent=pct, devices=per_wave[i], changing=changing[i])
                    for i, pct in enumerate(policy.waves)
                ],
                after=list(policy.after),
                component=RUNTIME,
            )
        )
    return plans, rollouts
