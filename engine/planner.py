"""The planner: a pure function from inventory, releases and reports to a fleet plan.

No database, filesystem, network or clock in here: the caller passes the loaded
operator repo, the reports, "now", and what the plan should record about where
its inputs came from. The diff is O(devices): one pass to decide each device,
one to assign waves per rollout, one to build the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from engine.waves import assign_waves
from inventory.duration import format_duration
from inventory.models import Device, Group, Inventory, Platform, RolloutPolicy
from inventory.version import Version
from states.manifest import HealthCheckKind, ReleaseManifest
from states.plan import (
    CHANGING_ACTIONS,
    FORMAT_VERSION,
    Action,
    DevicePlan,
    InventoryRef,
    Plan,
    ReleaseRef,
    RolloutPlan,
    StateRef,
    Step,
    StepName,
    WavePlan,
)
from states.report import Report

__all__ = [
    "PINNED_ROLLOUT_GROUP",
    "ReleaseView",
    "RepoView",
    "format_size",
    "plan_fleet",
    "rollout_id",
]

#: Rollout label of devices that have a pin but belong to no group.
PINNED_ROLLOUT_GROUP = "(pinned)"

_DEFAULT_POLICY = RolloutPolicy()


class ReleaseView(Protocol):
    """What the planner reads of a loaded release (``inventory.loader.LoadedRelease``)."""

    @property
    def manifest(self) -> ReleaseManifest: ...
    @property
    def path(self) -> Path: ...
    @property
    def sha256(self) -> str: ...
    @property
    def signature_path(self) -> Path | None: ...


class RepoView(Protocol):
    """What the planner reads of a loaded operator repo (``inventory.loader.OperatorRepo``)."""

    @property
    def root(self) -> Path: ...
    @property
    def inventory(self) -> Inventory: ...
    @property
    def assignment(self) -> Mapping[str, str]: ...
    @property
    def releases(self) -> Mapping[Version, ReleaseView]: ...
    @property
    def digest(self) -> str: ...


def rollout_id(group: str, release: Version) -> str:
    """The stable id of a group moving to a release, e.g. ``linux-prod@3.0.1``."""
    return f"{group}@{release}"


def format_size(size: int) -> str:
    """A byte count for humans: 512 B, 12.4 KB, 3.1 MB (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(slots=True)
class _Decision:
    """One device's decision before waves are known."""

    device: str
    group: str | None
    platform: Platform
    current: Version | None
    desired: Version
    action: Action
    reason: str
    rollout_group: str | None  # None: held by its pin, in no rollout


class _Steps:
    """Builds (and shares) the step list of each (release, platform, current) combination."""

    def __init__(self, releases: Mapping[Version, ReleaseView], refs: Mapping[str, str]) -> None:
        self._releases = releases
        self._manifest_paths = refs
        self._cache: dict[tuple[Version, Platform, Version | None], list[Step]] = {}

    def steps(self, desired: Version, platform: Platform, current: Version | None) -> list[Step]:
        key = (desired, platform, current)
        found = self._cache.get(key)
        if found is None:
            found = self._build(desired, platform, current)
            self._cache[key] = found
        return found

    def _build(self, desired: Version, platform: Platform, current: Version | None) -> list[Step]:
        manifest = self._releases[desired].manifest
        files = manifest.platforms[platform].files
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        size = format_size(sum(f.size for f in files))
        manifest_path = self._manifest_paths.get(str(desired), f"releases/{desired}.yaml")
        health = manifest.health_check
        if health is None:
            beat = "the agent service stays up after the restart"
        elif health.kind is HealthCheckKind.HEARTBEAT_FILE:
            beat = (
                f"{health.path} fresher than {format_duration(health.max_age)} "
                f"within {format_duration(health.timeout)}"
            )
        elif health.kind is HealthCheckKind.HTTP:
            beat = f"{health.url} answers 200 within {format_duration(health.timeout)}"
        elif health.kind is HealthCheckKind.PROCESS:
            beat = (
                f"the agent process stays up for {format_duration(health.stable_for)} "
                f"within {format_duration(health.timeout)}"
            )
        else:
            beat = f"the server records a heartbeat within {format_duration(health.timeout)}"
        return [
            Step.model_construct(name=StepName.DOWNLOAD, detail=f"{count}, {size}"),
            Step.model_construct(
                name=StepName.VERIFY,
                detail=f"signature of {manifest_path}, then sha256 and size of {count}",
            ),
            Step.model_construct(
                name=StepName.BACKUP,
                detail=f"keep {current} restorable"
                if current is not None
                else "nothing installed to back up",
            ),
            Step.model_construct(
                name=StepName.SWAP,
                detail=f"{current} -> {desired}" if current is not None else f"install {desired}",
            ),
            Step.model_construct(
                name=StepName.RESTART, detail="restart the agent through its service manager"
            ),
            Step.model_construct(name=StepName.CONFIRM_HEARTBEAT, detail=beat),
            Step.model_construct(
                name=StepName.COMMIT, detail=f"record {desired} as known-good and report"
            ),
        ]


def _rollback_reason(
    current: Version,
    desired: Version,
    releases: Mapping[Version, ReleaseView],
    report: Report,
    why: str,
) -> str:
    base = f"{current} -> {desired} ({why})"
    current_release = releases.get(current)
    if current_release is not None and desired in current_release.manifest.rollback_to:
        return f"{base}; {current}'s manifest authorises rolling back to {desired}"
    if report.known_good is not None and report.known_good == desired:
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


def _decide(
    device_id: str,
    device: Device,
    *,
    group_name: str | None,
    group: Group | None,
    report: Report | None,
    releases: Mapping[Version, ReleaseView],
    stale_before: datetime,
) -> _Decision | None:
    group_release = group.agent.release if group is not None and group.agent is not None else None
    desired = device.pin if device.pin is not None else group_release
    if desired is None:
        return None
    why = f"pin {desired}" if device.pin is not None else f"group {group_name}"
    rollout_group = group_name if group_name is not None else PINNED_ROLLOUT_GROUP
    current = report.agent_version if report is not None else None

    def decision(action: Action, reason: str, rollout: str | None = rollout_group) -> _Decision:
        return _Decision(
            device_id, group_name, device.platform, current, desired, action, reason, rollout
        )

    if report is None:
        return decision(Action.BLOCKED, "no report from this device yet")
    if report.last_seen < stale_before:
        return decision(Action.BLOCKED, f"no report since {_when(report.last_seen)}")
    if report.platform is not None and report.platform != device.platform:
        return decision(
            Action.BLOCKED,
            f"device reports platform {report.platform.value} but the inventory says "
            f"{device.platform.value}",
        )
    if (
        device.pin is not None
        and group_release is not None
        and group_release != device.pin
        and current == device.pin
    ):
        return decision(
            Action.PINNED, f"pinned to {device.pin}; group {group_name} wants {group_release}", None
        )
    if current is not None and current == desired:
        return decision(Action.NOOP, f"already on {desired}")

    release = releases.get(desired)
    if release is None:
        return decision(Action.BLOCKED, f"release {desired} has no manifest under releases/")
    if device.platform not in release.manifest.platforms:
        return decision(
            Action.BLOCKED, f"release {desired} has no artifact for {device.platform.value}"
        )
    if current is None:
        return decision(Action.INSTALL, f"no agent installed; install {desired} ({why})")
    if current < desired:
        return decision(Action.UPDATE, f"{current} -> {desired} ({why})")
    return decision(Action.ROLLBACK, _rollback_reason(current, desired, releases, report, why))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _release_ref(release: ReleaseView, root: Path) -> ReleaseRef:
    manifest = _relative(release.path, root)
    signature = (
        _relative(release.signature_path, root)
        if release.signature_path is not None
        else f"{manifest}.sig"
    )
    return ReleaseRef.model_construct(
        version=release.manifest.version,
        serial=release.manifest.serial,
        manifest=manifest,
        signature=signature,
        manifest_sha256=release.sha256,
        artifacts="artifacts/",
        artifacts_by_hash=False,
    )


def plan_fleet(
    repo: RepoView,
    reports: Mapping[str, Report],
    now: datetime,
    *,
    stale_after: timedelta,
    only_group: str | None = None,
    only_device: str | None = None,
    inventory_ref: InventoryRef | None = None,
    state_ref: StateRef | None = None,
) -> Plan:
    """Compute the plan of every managed device: action, reason, wave, rollout and steps.

    Devices with neither a pin nor a group that sets a release are listed in
    ``Plan.unmanaged``. ``only_group`` / ``only_device`` filter the devices,
    rollouts and summary of the result; waves are always computed on whole
    groups, so filtering never changes a device's wave. ``inventory_ref`` and
    ``state_ref`` are recorded as given (defaults: the repo's root and digest,
    and a state reference counting ``reports``).
    """
    inventory = repo.inventory
    groups = inventory.groups
    assignment = repo.assignment
    releases = repo.releases
    stale_before = now - stale_after

    decisions: list[_Decision] = []
    unmanaged: list[str] = []
    members: dict[tuple[str, Version], list[tuple[str, bool]]] = {}
    for device_id, device in inventory.devices.items():
        group_name = assignment.get(device_id)
        group = groups.get(group_name) if group_name is not None else None
        d = _decide(
            device_id,
            device,
            group_name=group_name,
            group=group,
            report=reports.get(device_id),
            releases=releases,
            stale_before=stale_before,
        )
        if d is None:
            unmanaged.append(device_id)
            continue
        decisions.append(d)
        if d.rollout_group is not None:
            key = (d.rollout_group, d.desired)
            bucket = members.get(key)
            if bucket is None:
                bucket = members[key] = []
            bucket.append((device_id, d.action in CHANGING_ACTIONS))

    waves_of: dict[tuple[str, Version], dict[str, int]] = {}
    rollouts: list[RolloutPlan] = []
    for (label, release), devices in sorted(members.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        group = groups.get(label)
        policy = group.rollout if group is not None else _DEFAULT_POLICY
        assigned = assign_waves(label, devices, policy.waves)
        waves_of[(label, release)] = assigned
        if only_group is not None and label != only_group:
            continue
        if only_device is not None and only_device not in assigned:
            continue
        per_wave = [0] * len(policy.waves)
        changing = [0] * len(policy.waves)
        for device_id, is_changing in devices:
            index = assigned[device_id]
            per_wave[index] += 1
            if is_changing:
                changing[index] += 1
        window = group.maintenance_window if group is not None else None
        rollouts.append(
            RolloutPlan.model_construct(
                id=rollout_id(label, release),
                group=label,
                release=release,
                policy=policy.model_dump(mode="json"),
                maintenance_window=window.model_dump(mode="json") if window else None,
                waves=[
                    WavePlan.model_construct(
                        index=i, percent=pct, devices=per_wave[i], changing=changing[i]
                    )
                    for i, pct in enumerate(policy.waves)
                ],
            )
        )

    root = repo.root
    release_refs: dict[str, ReleaseRef] = {}
    for version, loaded in releases.items():
        release_refs[str(version)] = _release_ref(loaded, root)
    steps = _Steps(releases, {k: v.manifest for k, v in release_refs.items()})

    summary = {action.value: 0 for action in Action}
    plans: list[DevicePlan] = []
    used_releases: set[str] = set()
    for d in decisions:
        if only_device is not None and d.device != only_device:
            continue
        if only_group is not None and only_group not in (d.group, d.rollout_group):
            continue
        wave: int | None = None
        rollout: str | None = None
        if d.rollout_group is not None:
            wave = waves_of[(d.rollout_group, d.desired)][d.device]
            rollout = rollout_id(d.rollout_group, d.desired)
        is_changing = d.action in CHANGING_ACTIONS
        if is_changing:
            used_releases.add(str(d.desired))
        summary[d.action.value] += 1
        plans.append(
            DevicePlan.model_construct(
                device=d.device,
                group=d.group,
                platform=d.platform,
                current=d.current,
                desired=d.desired,
                action=d.action,
                reason=d.reason,
                wave=wave,
                rollout=rollout,
                steps=steps.steps(d.desired, d.platform, d.current) if is_changing else [],
            )
        )

    if only_device is not None:
        unmanaged = [u for u in unmanaged if u == only_device]
    elif only_group is not None:
        unmanaged = []
    summary["unmanaged"] = len(unmanaged)

    unknown: list[str] = []
    if only_group is None and only_device is None:
        devices_known = inventory.devices
        unknown = sorted(r for r in reports if r not in devices_known)

    if inventory_ref is None:
        inventory_ref = InventoryRef.model_construct(
            root=str(root), digest=repo.digest, git_commit=None, git_dirty=None
        )
    if state_ref is None:
        latest = max((r.last_seen for r in reports.values()), default=None)
        state_ref = StateRef.model_construct(
            url="", reports=len(reports), reports_digest="", latest_report=latest
        )
    return Plan.model_construct(
        format_version=FORMAT_VERSION,
        generated_at=now,
        inventory=inventory_ref,
        state=state_ref,
        summary=summary,
        devices=plans,
        rollouts=rollouts,
        releases={k: v for k, v in release_refs.items() if k in used_releases},
        unmanaged=unmanaged,
        unknown_reports=unknown,
    )
