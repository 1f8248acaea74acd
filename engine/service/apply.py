"""Apply a plan: refuse a stale saved plan, count what moves, record the rollouts, follow them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.errors import EngineError
from engine.plan_io import check_plan_fresh
from engine.rollouts.record import ApplyResult, applicable_rollouts, record_rollouts
from engine.rollouts.status import RolloutStatus, rollout_status, waits_on_paused_gate
from engine.service.plan import make_plan
from engine.store import Store
from fleetbase.clock import utc_now
from inventory.loader import OperatorRepo
from states.plan import CHANGING_ACTIONS, Action, Plan

__all__ = [
    "SETTLED_STATES",
    "PendingChanges",
    "StalePlanError",
    "follow_rollouts",
    "pending_changes",
    "plan_to_apply",
    "record_apply",
]

#: Rollout states in which `apply --wait` stops following a rollout.
SETTLED_STATES = frozenset({"completed", "halted", "paused", "aborted", "superseded"})


class StalePlanError(EngineError):
    """A saved plan no longer describes the operator repo or the reports."""

    def __init__(self, reasons: Sequence[str]) -> None:
        """Record why the plan is stale (one line each)."""
        super().__init__("the plan is stale: " + "; ".join(reasons))
        self.reasons = list(reasons)


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


def plan_to_apply(repo: OperatorRepo, store: Store, saved: Plan | None) -> Plan:
    """``saved`` when it still describes ``repo`` and ``store``, else a fresh plan when none.

    Raises StalePlanError when ``saved`` is stale, StoreError when the store
    cannot be read.
    """
    if saved is None:
        return make_plan(repo, store)
    stale = check_plan_fresh(saved, repo, store)
    if stale:
        raise StalePlanError(stale)
    return saved


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
    changing = sum(1 for d in moving if d.action in CHANGING_ACTIONS)
    return PendingChanges(rollouts=chosen, moving=len(moving), changing=changing)


def record_apply(
    store: Store, plan: Plan, repo: OperatorRepo, now: datetime | None = None
) -> ApplyResult:
    """Record the rollouts of ``plan`` in one transaction; raises EngineError, recording nothing."""
    with store.write() as conn:
        return record_rollouts(conn, plan, repo, now if now is not None else utc_now())


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
