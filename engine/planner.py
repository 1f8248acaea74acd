"""The planner: a pure function from inventory, releases and reports to a fleet plan.

No database, filesystem, network or clock in here: the caller passes the loaded
operator repo, the reports, "now", and what the plan should record about where
its inputs came from. The diff is O(devices): one pass to decide each device,
one to assign waves per rollout, one to build the result.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import compress
from pathlib import Path
from typing import Any, Protocol

from engine._plan_decide import NO_STEPS, Decider, ReleaseView
from engine._plan_runtime import plan_runtimes
from engine.capabilities import lacks_feature, no_config_reason
from engine.reconfigure import reconfigure_outcome, reconfigure_steps
from engine.requires import RequirementsCheck, naming_runtime_rollouts
from engine.steps import describe_steps, format_size
from engine.waves import wave_indices
from fleetbase.duration import format_duration
from fleetbase.platform import Platform
from fleetbase.trusted import trusted_builder
from fleetbase.version import Version
from inventory.channels import Resolution
from inventory.models import Inventory, RolloutPolicy
from states.manifest import HealthCheckKind
from states.plan import (
    AGENT,
    FORMAT_VERSION,
    Action,
    DevicePlan,
    InventoryRef,
    Plan,
    ReleaseRef,
    RolloutPlan,
    StateRef,
    Step,
    WavePlan,
)
from states.protocol import FEATURE_CONFIG
from states.report import Report

__all__ = [
    "PINNED_ROLLOUT_GROUP",
    "ConfigDigests",
    "ReleaseView",
    "RepoView",
    "config_label",
    "format_size",
    "plan_fleet",
    "rollout_id",
]

#: Rollout label of devices that have a pin but belong to no group.
PINNED_ROLLOUT_GROUP = "(pinned)"

_DEFAULT_POLICY = RolloutPolicy()
_PINNED = Action.PINNED


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
    @property
    def resolutions(self) -> Mapping[str, Resolution]: ...


#: A DevicePlan from a dict of every field's value, unvalidated (once per device).
_device_plan = trusted_builder(DevicePlan)


def rollout_id(group: str, release: Version, config: str | None = None) -> str:
    """The stable id of a group moving to a release, e.g. ``linux-prod@3.0.1``.

    With managed config, ``config`` (``config_label``) names its desired digests:
    ``linux-prod@3.0.1+cfg1a2b3c4d``, so a config-only change is a rollout of its own.
    """
    return f"{group}@{release}" if config is None else f"{group}@{release}+{config}"


def config_label(digests: Iterable[str | None]) -> str | None:
    """``cfg`` and 8 hex digits naming a set of config digests; None when there is none."""
    distinct = sorted({d for d in digests if d is not None})
    if not distinct:
        return None
    return "cfg" + hashlib.sha256("\n".join(distinct).encode()).hexdigest()[:8]


#: The config digest a device should run under a release (None: the release manages none).
ConfigDigests = Callable[[str, Version], str | None]


class _Steps:
    """Builds (and shares) the step list of each (release, platform, current) combination."""

    def __init__(self, releases: Mapping[Version, ReleaseView], refs: Mapping[str, str]) -> None:
        self._releases = releases
        self._manifest_paths = refs
        self._cache: dict[tuple[str, Platform, str | None], list[Step]] = {}

    def steps(self, desired: Version, platform: Platform, current: Version | None) -> list[Step]:
        """The steps from ``current`` to ``desired`` on ``platform`` (one list shared by all)."""
        key = (desired.text, platform, current.text if current is not None else None)
        found = self._cache.get(key)
        if found is None:
            found = self._build(desired, platform, current)
            self._cache[key] = found
        return found

    def _build(self, desired: Version, platform: Platform, current: Version | None) -> list[Step]:
        manifest = self._releases[desired].manifest
        files = manifest.platforms[platform].files
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
        elif health.kind is HealthCheckKind.NATS:
            beat = (
                f"a heartbeat on NATS fresher than {format_duration(health.max_age)} "
                f"within {format_duration(health.timeout)}"
            )
        else:
            beat = f"the server records a heartbeat within {format_duration(health.timeout)}"
        return describe_steps(
            desired,
            current,
            files=len(files),
            size=sum(f.size for f in files),
            signature_of=manifest_path,
            confirm=beat,
        )


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


_Records = list[tuple[dict[str, Any], bool]]


@dataclass(slots=True)
class _Members:
    """One rollout's devices in fleet order: their records, ids, and whether each changes.

    Kept side by side so that waves are assigned without another pass over the records.
    ``configs`` holds the distinct config digests of its devices (they name the rollout).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    changing: list[bool] = field(default_factory=list)
    configs: set[str] = field(default_factory=set)


_Bucket = tuple[str, Version, _Members]


def _find_bucket(
    buckets: list[_Bucket], label: str, release: Version, known: Iterable[Version]
) -> _Members:
    """The devices of ``label``'s rollout of a release equal to ``release`` (3.0 == 3.0.0).

    A new rollout takes the spelling of the release manifest's version when
    there is one, so its id does not depend on which device came first.
    """
    for other_label, other_release, found in buckets:
        if other_label == label and other_release == release:
            return found
    canonical = next((v for v in known if v == release), release)
    members = _Members()
    buckets.append((label, canonical, members))
    return members


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
    runtime_releases: Collection[Version] | None = None,
    configs: ConfigDigests | None = None,
) -> Plan:
    """Compute the plan of every managed device: action, reason, wave, rollout and steps.

    Devices with neither a pin nor a group that sets a release are listed in
    ``Plan.unmanaged``. ``only_group`` / ``only_device`` filter the devices,
    rollouts and summary of the result; waves are always computed on whole
    groups, so filtering never changes a device's wave. ``inventory_ref`` and
    ``state_ref`` are recorded as given (defaults: the repo's root and digest,
    and a state reference counting ``reports``). Groups with ``runtime:`` add runtime
    rollouts and ``Plan.runtime_devices`` (``engine._plan_runtime``); ``runtime_releases``
    are the runtime releases there are (None: not checked). ``configs`` gives each device's
    desired config digest: a device on its release that reports another digest
    is planned ``reconfigure``.
    """
    inventory = repo.inventory
    groups = inventory.groups
    releases = repo.releases
    root = repo.root
    release_refs = {str(v): _release_ref(loaded, root) for v, loaded in releases.items()}
    steps = _Steps(releases, {k: v.manifest for k, v in release_refs.items()})
    decide = Decider(releases, now - stale_after, steps.steps).decide
    requirements = RequirementsCheck(releases)
    check_requirements = requirements.check if requirements.any else None
    awaiting = False  # some device waits for its runtime (its reason may name a rollout)

    # Pass 1: decide every device. A record is the future DevicePlan's field dict.
    # What a device's group decides, once per group: [release (None: the group sets
    # none), rollout label, why, channel, the rollout of its unpinned devices (found
    # on first use)].
    group_info: dict[str | None, list[Any]] = {}
    resolutions = repo.resolutions
    records: _Records = []
    unmanaged: list[str] = []
    bucket_of: dict[tuple[str, str], _Members] = {}
    buckets: list[_Bucket] = []
    group_of = repo.assignment.get
    report_of = reports.get
    noop = Action.NOOP
    for device_id, device in inventory.devices.items():
        group_name = group_of(device_id)
        info = group_info.get(group_name)
        if info is None:
            group = groups.get(group_name) if group_name is not None else None
            agent = group.agent if group is not None else None
            label = group_name if group_name is not None else PINNED_ROLLOUT_GROUP
            info = [agent.release if agent else None, label, f"group {group_name}", None, None]
            resolution = resolutions.get(group_name) if group_name is not None else None
            if agent is not None and resolution is not None:
                why = f"group {group_name}, {resolution.why()}"
                info = [resolution.release, label, why, resolution.channel, None]
            group_info[group_name] = info
        group_release, label, why, channel, bucket = info
        pin = device.pin
        against: str | None = None
        if pin is not None:
            desired = pin
            why = f"pin {pin}"
            channel = None
            bucket = None
            if group_release is not None and group_release != pin:
                against = f"pinned to {pin}; group {group_name} wants {group_release}"
        elif group_release is not None:
            desired = group_release
        else:
            unmanaged.append(device_id)
            continue
        report = report_of(device_id)
        action, reason, is_changing, step_list = decide(device, report, desired, why, against)
        awaits_runtime: str | None = None
        if is_changing and check_requirements is not None and report is not None:
            unmet = check_requirements(desired, device.platform, report)
            if unmet is not None:
                action, reason, is_changing = Action.BLOCKED, unmet.reason(str(desired)), False
                step_list = NO_STEPS
                awaits_runtime = unmet.awaits_runtime
                awaiting = awaiting or awaits_runtime is not None
        digest = configs(device_id, desired) if configs is not None else None
        if digest is not None and action is noop:
            assert report is not None  # NOOP needs a report
            if report.config_digest != digest:
                action, reason, is_changing = reconfigure_outcome(
                    report.config_digest, digest, desired, why
                )
                step_list = reconfigure_steps(desired)
        if digest is not None and is_changing and lacks_feature(report, FEATURE_CONFIG):
            assert report is not None  # lacks_feature needs a report
            action, reason, is_changing = Action.BLOCKED, no_config_reason(report), False
            step_list = NO_STEPS
        record: dict[str, Any] = {
            "device": device_id,
            "group": group_name,
            "platform": device.platform,
            "current": report.agent_version if report is not None else None,
            "desired": desired,
            "action": action,
            "reason": reason,
            "wave": None,
            "rollout": None,
            "steps": step_list,
            "channel": channel,
            "awaits_runtime": awaits_runtime,
            "component": AGENT,
            "config_digest": digest,
            "config_diff": None,
        }
        records.append((record, is_changing))
        if action is _PINNED:
            continue
        if bucket is None:
            key = (label, desired.text)
            bucket = bucket_of.get(key)
            if bucket is None:
                bucket = bucket_of[key] = _find_bucket(buckets, label, desired, releases)
            if pin is None:
                info[4] = bucket
        bucket.records.append(record)
        bucket.devices.append(device_id)
        bucket.changing.append(is_changing)
        if digest is not None:
            bucket.configs.add(digest)

    # Pass 2: waves per rollout (group + release), on the whole group.
    rollouts: list[RolloutPlan] = []
    for label, release, bucket in sorted(buckets, key=lambda b: (b[0], b[1])):
        group = groups.get(label)
        policy = group.rollout if group is not None else _DEFAULT_POLICY
        rid = rollout_id(label, release, config_label(bucket.configs))
        indices = wave_indices(label, bucket.devices, bucket.changing, policy.waves)
        for record, index in zip(bucket.records, indices, strict=True):
            record["wave"] = index
            record["rollout"] = rid
        in_wave = Counter(indices)
        changing_in_wave = Counter(compress(indices, bucket.changing))
        per_wave = [in_wave[i] for i in range(len(policy.waves))]
        changing = [changing_in_wave[i] for i in range(len(policy.waves))]
        if only_group is not None and label != only_group:
            continue
        if only_device is not None and only_device not in bucket.devices:
            continue
        window = group.maintenance_window if group is not None else None
        agent = group.agent if group is not None else None
        followed = agent.channel if agent is not None and agent.release == release else None
        resolution = resolutions.get(label) if followed is not None else None
        rollouts.append(
            RolloutPlan.model_construct(
                id=rid,
                group=label,
                release=release,
                policy=policy.model_dump(mode="json", exclude_none=True),
                maintenance_window=window.model_dump(mode="json") if window else None,
                waves=[
                    WavePlan.model_construct(
                        index=i, percent=pct, devices=per_wave[i], changing=changing[i]
                    )
                    for i, pct in enumerate(policy.waves)
                ],
                after=list(policy.after),
                channel=followed,
                resolution=resolution.describe() if resolution is not None else None,
            )
        )

    runtime_plans, runtime_rollouts = plan_runtimes(
        inventory, repo.assignment, reports, known=runtime_releases,
        stale_before=now - stale_after,
    )  # fmt: skip
    if awaiting and runtime_plans:
        naming_runtime_rollouts((r for r, _ in records), runtime_plans)
    runtime_plans = [
        p
        for p in runtime_plans
        if (only_device is None or p.device == only_device)
        and (only_group is None or p.group == only_group)
    ]
    kept = {p.rollout for p in runtime_plans}
    rollouts.extend(r for r in runtime_rollouts if r.id in kept)

    # Pass 3: filter, count, build the plan.
    counts = dict.fromkeys(map(id, Action), 0)  # by identity: Enum.__hash__ is Python code
    plans: list[DevicePlan] = []
    used_releases: set[str] = set()
    ref_keys: dict[str, str] = {}
    for record, is_changing in records:
        if only_device is not None and record["device"] != only_device:
            continue
        if only_group is not None and record["group"] != only_group:
            continue
        counts[id(record["action"])] += 1
        if is_changing:
            # Keyed like ``release_refs``: a pin of "3.0" uses the release "3.0.0".
            text = record["desired"].text
            ref_key = ref_keys.get(text)
            if ref_key is None:
                ref_key = next(str(v) for v in releases if v == record["desired"])
                ref_keys[text] = ref_key
            used_releases.add(ref_key)
        plans.append(_device_plan(record))
    summary = {action.value: counts[id(action)] for action in Action}

    if only_device is not None:
        unmanaged = [u for u in unmanaged if u == only_device]
    elif only_group is not None:
        unmanaged = []
    summary["unmanaged"] = len(unmanaged)

    unknown: list[str] = []
    if only_group is None and only_device is None:
        unknown = sorted(reports.keys() - inventory.devices.keys())

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
        runtime_devices=runtime_plans,
    )
