"""Recording an applied plan: one rollout per group and release, its devices, its releases.

``record_rollouts`` runs inside the caller's write transaction, so an apply
lands completely or not at all.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, insert, select

from engine.planner import ReleaseView
from engine.rollouts import _store
from engine.rollouts._overlaps import resolve_overlaps
from engine.rollouts._store import end_rollouts
from engine.rollouts.errors import IllegalTransitionError
from engine.rollouts.model import LIVE_ROLLOUT_STATES, DeviceState, RolloutState
from engine.rollouts.releases import record_release
from engine.rollouts.transitions import (
    INITIAL_DEVICE_STATES,
    INITIAL_ROLLOUT_STATE,
    RolloutEvent,
)
from engine.store.schema import rollout_devices, rollouts
from engine.waves import wave_fraction
from fleetbase.version import Version
from inventory.models import Inventory
from states.plan import AGENT, CHANGING_ACTIONS, RUNTIME, Action, DevicePlan, Plan, RolloutPlan

__all__ = [
    "ApplyResult",
    "RecordedRollout",
    "applicable_rollouts",
    "record_release",
    "record_rollouts",
]

#: Planner reasons of blocked devices that only lack a (recent) report: they join
#: the rollout as pending and take their stable wave once they report.
_NO_REPORT_PREFIX = "no report"

_LIVE = [
    s.value
    for s in (
        RolloutState.WAITING,
        RolloutState.ACTIVE,
        RolloutState.PAUSED,
        RolloutState.COMPLETED,
    )
]
_LIVE_ALL = [s.value for s in LIVE_ROLLOUT_STATES]


class RepoLike(Protocol):
    """What recording reads of the operator repo (``inventory.loader.OperatorRepo``)."""

    @property
    def inventory(self) -> Inventory: ...
    @property
    def releases(self) -> Mapping[Version, ReleaseView]: ...
    @property
    def digest(self) -> str: ...


@dataclass(frozen=True)
class RecordedRollout:
    """A rollout written by ``record_rollouts``."""

    id: int
    name: str
    group: str
    release: str
    devices: int
    pending: int
    succeeded: int
    excluded: int
    overridden: int
    superseded: tuple[int, ...]
    after: tuple[str, ...] = ()  # gate rollouts (group@release #id) it waits for
    not_waiting: tuple[str, ...] = ()  # after groups with no rollout of this release


@dataclass
class ApplyResult:
    """What an apply recorded, skipped and replaced."""

    rollouts: list[RecordedRollout] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # messages: already rolling out
    releases: list[str] = field(default_factory=list)  # versions written to the store
    unsigned: list[str] = field(default_factory=list)  # versions without a .sig


def applicable_rollouts(plan: Plan, inventory: Inventory) -> list[RolloutPlan]:
    """The plan's rollouts that `engine apply` records: a group moving to its own release.

    Rollouts of devices held on their pin (no group, or a pin that differs from
    the group's release) are left out: pinned devices are never moved.
    """
    chosen: list[RolloutPlan] = []
    for rollout in plan.rollouts:
        group = inventory.groups.get(rollout.group)
        spec = None if group is None else (
            group.runtime if rollout.component == RUNTIME else group.agent
        )  # fmt: skip
        if spec is None or spec.release != rollout.release:
            continue
        chosen.append(rollout)
    return chosen


def _device_row(
    d: DevicePlan,
    inventory: Inventory,
    group: str,
    now: datetime,
    runtime_requirement: str | None = None,
) -> dict[str, Any]:
    """The rollout_devices row of a planned device; ``runtime_requirement`` is the release's
    ``requires: runtime``, which a device without a report yet must meet before its offer."""
    device = inventory.devices.get(d.device)
    pin = device.pin if device is not None and d.component == AGENT else None
    current = None if d.current is None else str(d.current)
    reason: str | None = None
    waits: str | None = None
    if pin is not None or d.action is Action.PINNED:
        state, reason = DeviceState.EXCLUDED, f"pinned to {pin}" if pin else d.reason
    elif d.action is Action.NOOP:
        state, reason = DeviceState.SUCCEEDED, "already on the release when applied"
    elif d.action in CHANGING_ACTIONS:
        state = DeviceState.PENDING
    elif d.action is Action.BLOCKED and d.reason.startswith(_NO_REPORT_PREFIX):
        state, reason, waits = DeviceState.PENDING, d.reason, runtime_requirement
    elif d.action is Action.BLOCKED and d.awaits_runtime is not None:
        # Only its runtime is too old: it waits until it reports one that meets the
        # requirement (the controller offers it then, engine.rollouts._tick).
        state, reason, waits = DeviceState.PENDING, d.reason, d.awaits_runtime
    else:
        state, reason = DeviceState.EXCLUDED, d.reason or f"planned as {d.action.value}"
    if state not in INITIAL_DEVICE_STATES:
        raise IllegalTransitionError(f"a device is never recorded as {state.value}")
    return {
        "device": d.device,
        "wave": d.wave if d.wave is not None else 0,
        "position": wave_fraction(group, d.device),
        "platform": d.platform.value,
        "from_version": current,
        "state": state.value,
        "attempts": 0,
        "reason": reason,
        "rollback_to": None,
        "offered_at": None,
        "started_at": None,
        "finished_at": now if state is DeviceState.SUCCEEDED else None,
        "retry_at": None,
        "updated_at": now,
        "requires_runtime": waits,
        "config_digest": d.config_digest,
    }


def _supersede(
    conn: Connection, group: str, now: datetime, new_name: str, component: str
) -> list[int]:
    ids = [
        int(i)
        for (i,) in conn.execute(
            select(rollouts.c.id).where(
                rollouts.c.group_name == group,
                rollouts.c.state.in_(_LIVE_ALL),
                rollouts.c.component == component,
            )
        )
    ]
    if not ids:
        return []
    end_rollouts(conn, ids, RolloutEvent.SUPERSEDE, f"superseded by {new_name}", now)
    return ids


def _extend(
    conn: Connection,
    rollout_id: int,
    *,
    group: str,
    priority: int,
    planned: list[DevicePlan],
    inventory: Inventory,
    now: datetime,
    runtime_requirement: str | None,
    component: str = AGENT,
) -> int:
    """Add devices the plan has in a rollout that already runs (new in the inventory)."""
    known = {
        d
        for (d,) in conn.execute(
            select(rollout_devices.c.device).where(rollout_devices.c.rollout_id == rollout_id)
        )
    }
    rows = [
        _device_row(d, inventory, group, now, runtime_requirement)
        for d in planned
        if d.device not in known
    ]
    if not rows:
        return 0
    for row in rows:
        row["rollout_id"] = rollout_id
    conn.execute(insert(rollout_devices), rows)
    resolve_overlaps(
        conn,
        rollout_id,
        group=group,
        priority=priority,
        devices=[r["device"] for r in rows],
        now=now,
        component=component,
    )
    return len(rows)


def _gate(
    conn: Connection,
    gated: list[tuple[int, RolloutPlan]],
    this_apply: dict[tuple[str, str, str], tuple[int, str]],
    recorded: list[RecordedRollout],
    now: datetime,
) -> list[RecordedRollout]:
    """Make new rollouts with ``after`` wait for their gate rollouts; the updated records.

    The gate of group G is the rollout moving G to the same release that this
    apply records or keeps, else G's newest live rollout of that release in the
    store. A G with neither (it wants another release) is no gate.
    """
    found: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for rid, rp in gated:
        ids: list[int] = []
        names: list[str] = []
        skipped: list[str] = []
        for group in rp.after:
            gate = this_apply.get((group, str(rp.release), rp.component))
            if gate is None:
                row = conn.execute(
                    select(rollouts.c.id, rollouts.c.name)
                    .where(
                        rollouts.c.group_name == group,
                        rollouts.c.release == str(rp.release),
                        rollouts.c.state.in_(_LIVE_ALL),
                        rollouts.c.component == rp.component,
                    )
                    .order_by(rollouts.c.id.desc())
                    .limit(1)
                ).first()
                gate = (int(row[0]), str(row[1])) if row is not None else None
            if gate is None:
                skipped.append(group)
            elif gate[0] != rid and gate[0] not in ids:
                ids.append(gate[0])
                names.append(gate[1])
        if ids:
            _store.move_rollout(
                conn,
                rid,
                INITIAL_ROLLOUT_STATE,
                RolloutEvent.WAIT_FOR_GATES,
                reason=f"waiting for {', '.join(names)}",
                now=now,
                wave_opened_at=None,
                after_ids=json.dumps(ids),
                after_names=json.dumps(names),
            )
        found[rid] = (
            tuple(f"{n} #{i}" for n, i in zip(names, ids, strict=True)),
            tuple(skipped),
        )
    return [
        dataclasses.replace(r, after=found[r.id][0], not_waiting=found[r.id][1])
        if r.id in found
        else r
        for r in recorded
    ]


def record_rollouts(conn: Connection, plan: Plan, repo: RepoLike, now: datetime) -> ApplyResult:
    """Record the plan's rollouts, their devices and their releases in the caller's transaction.

    One rollout per group moving to its release (see ``applicable_rollouts``),
    with every device of that group the plan put in it: changing devices and
    devices without a report yet are ``pending`` in their plan wave, unchanged
    ones ``succeeded``, pinned and otherwise blocked ones ``excluded`` with the
    reason. A group's earlier live rollout is superseded, unless it already
    moves the group to the same release and is waiting, active, paused or
    completed (then nothing is recorded for that group). A new rollout whose
    group has ``rollout.after`` starts ``waiting`` for its gate rollouts (see
    ``_gate``) when it has any. The manifest and signature
    bytes of each target release and of each release devices come from are
    stored for the server. Raises RolloutError when a release file cannot be
    read or changed since the repo was loaded.
    """
    inventory = repo.inventory
    result = ApplyResult()
    by_rollout: dict[str, list[DevicePlan]] = {}
    for d in [*plan.devices, *plan.runtime_devices]:
        if d.rollout is not None:
            by_rollout.setdefault(d.rollout, []).append(d)
    versions: set[Version] = set()
    # (group, release) -> (id, name) of every rollout this apply records or keeps
    this_apply: dict[tuple[str, str, str], tuple[int, str]] = {}
    gated: list[tuple[int, RolloutPlan]] = []
    for rp in applicable_rollouts(plan, inventory):
        group = inventory.groups[rp.group]
        target = None if rp.component == RUNTIME else repo.releases.get(rp.release)
        requires = None if target is None else target.manifest.requires
        runtime_requirement = None if requires is None else requires.runtime
        same = conn.execute(
            select(rollouts.c.id, rollouts.c.state).where(
                rollouts.c.group_name == rp.group,
                rollouts.c.state.in_(_LIVE),
                rollouts.c.release == str(rp.release),
                rollouts.c.component == rp.component,
                # the id carries the config digests: a config change is a new rollout
                rollouts.c.name == rp.id,
            )
        ).first()
        if same is not None:
            this_apply[rp.group, str(rp.release), rp.component] = (int(same[0]), rp.id)
            added = _extend(
                conn,
                int(same[0]),
                group=rp.group,
                priority=group.priority,
                planned=by_rollout.get(rp.id, []),
                inventory=inventory,
                now=now,
                runtime_requirement=runtime_requirement,
                component=rp.component,
            )
            extra = f"; {added} new devices joined it" if added else "; nothing recorded"
            result.unchanged.append(
                f"{rp.id}: rollout #{same[0]} already moves group {rp.group} to "
                f"{rp.release} ({same[1]}){extra}"
            )
            continue
        superseded = _supersede(conn, rp.group, now, rp.id, rp.component)
        runtime = rp.component == RUNTIME
        loaded = None if runtime else repo.releases.get(rp.release)
        rid = conn.execute(
            insert(rollouts)
            .values(
                name=rp.id,
                group_name=rp.group,
                release=str(rp.release),
                release_sha256=loaded.sha256 if loaded is not None else None,
                priority=group.priority,
                policy=json.dumps(rp.policy, sort_keys=True),
                maintenance_window=json.dumps(rp.maintenance_window, sort_keys=True)
                if rp.maintenance_window is not None
                else None,
                state=INITIAL_ROLLOUT_STATE.value,
                reason=None,
                current_wave=0,
                wave_opened_at=now,
                wave_met_at=None,
                resumed_at=None,
                inventory_digest=repo.digest,
                created_at=now,
                updated_at=now,
                finished_at=None,
                requires_runtime=runtime_requirement,
                component=rp.component,
                channel=rp.channel,
            )
            .returning(rollouts.c.id)
        ).scalar_one()
        this_apply[rp.group, str(rp.release), rp.component] = (rid, rp.id)
        if rp.after:
            gated.append((rid, rp))
        rows = [
            _device_row(d, inventory, rp.group, now, runtime_requirement)
            for d in by_rollout.get(rp.id, [])
        ]
        for row in rows:
            row["rollout_id"] = rid
            if row["from_version"] is not None and not runtime:
                versions.add(Version(row["from_version"]))
        if rows:
            conn.execute(insert(rollout_devices), rows)
        overridden = resolve_overlaps(
            conn,
            rid,
            group=rp.group,
            priority=group.priority,
            devices=[r["device"] for r in rows],
            now=now,
            component=rp.component,
        )
        if not runtime:
            versions.add(rp.release)
        states = [r["state"] for r in rows]
        result.rollouts.append(
            RecordedRollout(
                id=rid,
                name=rp.id,
                group=rp.group,
                release=str(rp.release),
                devices=len(rows),
                pending=states.count(DeviceState.PENDING.value),
                succeeded=states.count(DeviceState.SUCCEEDED.value),
                excluded=states.count(DeviceState.EXCLUDED.value),
                overridden=overridden,
                superseded=tuple(superseded),
            )
        )
    if gated:
        result.rollouts = _gate(conn, gated, this_apply, result.rollouts, now)
    for version in sorted(versions):
        loaded = repo.releases.get(version)
        if loaded is None:
            continue
        signed = record_release(conn, loaded, now)
        result.releases.append(str(version))
        if not signed:
            result.unsigned.append(str(version))
    return result
