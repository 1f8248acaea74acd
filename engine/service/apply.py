"""Apply a plan: refuse a stale saved plan, count what moves, record the rollouts, follow them."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.errors import EngineError, StoreError
from engine.plan_drift import DeviceDrift, Drift, plan_drift
from engine.plan_io import check_plan_fresh
from engine.rollouts.record import ApplyResult, applicable_rollouts, record_rollouts
from engine.rollouts.status import RolloutStatus, rollout_status, waits_on_paused_gate
from engine.service.plan import make_plan
from engine.store import Store
from engine.store.schema import reports, rollout_devices, rollouts
from fleetbase.clock import utc_now, utc_text
from inventory.loader import OperatorRepo
from states.plan import AGENT, CHANGING_ACTIONS, Action, Plan

__all__ = [
    "SETTLED_STATES",
    "DriftError",
    "ExpiredRelease",
    "PendingChanges",
    "PlanToApply",
    "StalePlanError",
    "changed_resolutions",
    "expired_releases",
    "follow_rollouts",
    "pending_changes",
    "plan_to_apply",
    "record_apply",
    "refresh_statistics",
    "unsigned_releases",
]

_log = logging.getLogger("engine.apply")

#: Rollout states in which `apply --wait` stops following a rollout.
SETTLED_STATES = frozenset({"completed", "halted", "paused", "aborted", "superseded"})


class StalePlanError(EngineError):
    """A saved plan no longer describes the desired state (operator repo, releases, store)."""

    def __init__(self, reasons: Sequence[str]) -> None:
        """Record why the plan is stale (one line each)."""
        super().__init__("the plan is stale: " + "; ".join(reasons))
        self.reasons = list(reasons)


class DriftError(EngineError):
    """``--strict``: the fleet drifted since the plan in a way that changes what it does."""

    def __init__(self, drift: Drift) -> None:
        """Record the drift; ``changed`` lists the devices whose action would differ now."""
        self.drift = drift
        self.changed: list[DeviceDrift] = drift.changes_plan
        super().__init__(
            f"{len(self.changed)} device(s) drifted since the plan in a way that changes "
            "what it does"
        )


@dataclass(frozen=True)
class PlanToApply:
    """The plan `engine apply` records, and how the fleet drifted since it was made."""

    plan: Plan
    drift: Drift
    saved: bool  # True for a saved plan, False for one made now


@dataclass(frozen=True)
class PendingChanges:
    """What applying a plan would record: its rollouts and the devices they move."""

    rollouts: frozenset[str]
    moving: int  # devices of those rollouts that change now or once they report
    changing: int  # of those, devices that change now

    @property
    def waiting(self) -> int:
        """Devices that move once they report (blocked for now)."""
        return self.moving - self.changing

    @property
    def empty(self) -> bool:
        """True when applying would record nothing."""
        return not self.rollouts or not self.moving


def plan_to_apply(
    repo: OperatorRepo, store: Store, saved: Plan | None, *, strict: bool = False
) -> PlanToApply:
    """``saved`` with its drift when it still describes the desired state, else a fresh plan.

    A saved plan stays valid while the operator repo's files (inventory,
    release manifests, engine.yaml) and the store are the ones it was made
    from, whatever the devices reported since; that drift is returned for the
    operator to see. Raises StalePlanError when the desired state changed,
    DriftError when ``strict`` and the drift changes what the plan does to a
    device, StoreError when the store cannot be read.
    """
    if saved is None:
        return PlanToApply(make_plan(repo, store), Drift(), saved=False)
    stale = check_plan_fresh(saved, repo, store) + changed_resolutions(saved, repo)
    if stale:
        raise StalePlanError(stale)
    drift = plan_drift(saved, make_plan(repo, store))
    if strict and drift.changes_plan:
        raise DriftError(drift)
    return PlanToApply(saved, drift, saved=True)


def changed_resolutions(plan: Plan, repo: OperatorRepo) -> list[str]:
    """Groups whose channel resolves to another release now than when ``plan`` was made.

    With the repo's files unchanged this happens only when the release the
    plan resolved to has expired since (a channel never resolves to an
    expired release): the plan is then stale like one whose files changed.
    """
    reasons: list[str] = []
    for rollout in plan.rollouts:
        if rollout.channel is None or rollout.component != AGENT:
            continue
        now = repo.resolutions.get(rollout.group)
        if now is None or now.channel != rollout.channel or now.release == rollout.release:
            continue
        reasons.append(
            f"group {rollout.group}'s channel {rollout.channel} resolved to {rollout.release} "
            f"when the plan was made; now {now.describe()}"
        )
    return reasons


def unsigned_releases(plan: Plan, repo: OperatorRepo) -> list[str]:
    """The releases `engine apply` would roll out that have no signature beside them."""
    found: set[str] = set()
    for rollout in applicable_rollouts(plan, repo.inventory):
        if rollout.component != AGENT:
            continue  # runtime releases are signed bundles (engine.runtime_releases)
        loaded = repo.releases.get(rollout.release)
        if loaded is not None and loaded.signature_path is None:
            found.add(str(rollout.release))
    return sorted(found)


@dataclass(frozen=True)
class ExpiredRelease:
    """A release `engine apply` would roll out whose manifest has expired."""

    version: str
    manifest: str  # releases/<file>
    expired: datetime

    def describe(self) -> str:
        """``3.0.1 (releases/3.0.1.yaml expired 2026-11-30T00:00:00Z)``."""
        return f"{self.version} ({self.manifest} expired {utc_text(self.expired)})"


def expired_releases(
    plan: Plan, repo: OperatorRepo, rollouts: Collection[str], now: datetime
) -> list[ExpiredRelease]:
    """The agent releases of ``rollouts`` (ids of the plan's) whose manifest expired at ``now``.

    Devices refuse an expired manifest, so such a rollout could only fail. A
    group following a channel never resolves to one when planned, but a saved
    plan may name a release that expired since it was made.
    """
    found: dict[str, ExpiredRelease] = {}
    for rollout in plan.rollouts:
        if rollout.component != AGENT or rollout.id not in rollouts:
            continue
        loaded = repo.releases.get(rollout.release)
        if loaded is not None and loaded.manifest.expires <= now:
            version = str(rollout.release)
            found[version] = ExpiredRelease(
                version, f"releases/{loaded.path.name}", loaded.manifest.expires
            )
    return [found[v] for v in sorted(found)]


def pending_changes(plan: Plan, repo: OperatorRepo) -> PendingChanges:
    """The rollouts `engine apply` would record from ``plan`` and the devices they move."""
    chosen = frozenset(r.id for r in applicable_rollouts(plan, repo.inventory))
    devices = repo.inventory.devices
    moving = [
        d
        for d in plan.devices
        if d.rollout in chosen
        and (d.action in CHANGING_ACTIONS or d.action is Action.BLOCKED)
        and devices[d.device].pin is None
    ]
    # Runtime releases move the runtime whatever the device's agent pin says.
    moving += [
        d
        for d in plan.runtime_devices
        if d.rollout in chosen and (d.action in CHANGING_ACTIONS or d.action is Action.BLOCKED)
    ]
    changing = sum(1 for d in moving if d.action in CHANGING_ACTIONS)
    return PendingChanges(rollouts=chosen, moving=len(moving), changing=changing)


def record_apply(
    store: Store, plan: Plan, repo: OperatorRepo, now: datetime | None = None
) -> ApplyResult:
    """Record the rollouts of ``plan`` in one transaction; raises EngineError, recording nothing."""
    with store.write() as conn:
        result = record_rollouts(conn, plan, repo, now if now is not None else utc_now())
    if result.rollouts:
        refresh_statistics(store)
    return result


def refresh_statistics(store: Store) -> None:
    """Give PostgreSQL's planner the rollout tables' new size at once (not at autovacuum's
    next pass): with the statistics of an empty table it chose plans that read every
    rollout device for each check-in. The reports too: a store filled by enrollment since
    it was created looks empty to the planner, and the controller's search for devices to
    offer then joined each of 100,000 reports to its rollout row by index (2.7 s per search)
    instead of hashing them. A failure is logged, never fatal: the rollouts are recorded."""
    try:
        store.analyze([reports.name, rollout_devices.name, rollouts.name])
    except StoreError as e:
        _log.warning("planner statistics not refreshed after apply: %s", e)


def follow_rollouts(
    store: Store, ids: Sequence[int], now: datetime | None = None
) -> tuple[list[RolloutStatus], bool]:
    """The rollouts ``ids`` now, and whether every one settled (or waits on a paused gate)."""
    when = now if now is not None else utc_now()
    with store.read() as conn:
        found: list[RolloutStatus] = []
        for rollout_id in ids:
            found.extend(rollout_status(conn, now=when, rollout_id=rollout_id))
        settled = all(
            s.state.value in SETTLED_STATES or waits_on_paused_gate(conn, s) for s in found
        )
        return found, settled
