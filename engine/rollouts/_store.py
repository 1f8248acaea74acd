"""The rollout tables as typed rows, and every state write through the transition tables.

The controller, apply (``record``) and operator actions (``ops``) read and
write ``rollouts`` and ``rollout_devices`` here. A state is written only by
:func:`move_rollout` / :func:`move_rollouts` and :func:`move_device` /
:func:`move_devices`, which take an event, look the next state up in
``transitions`` and guard the UPDATE with the source state(s), so a row that
changed meanwhile is left alone. The check-in fast path in ``offers`` builds
its two statements from the same tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, or_, select, update

from engine.rollouts.errors import IllegalTransitionError
from engine.rollouts.model import LIVE_ROLLOUT_STATES, DeviceState, RolloutState
from engine.rollouts.policy import DeviceObservation, WaveStateCount
from engine.rollouts.transitions import (
    DeviceEvent,
    RolloutEvent,
    device_sources,
    next_device_state,
    next_rollout_state,
    rollout_sources,
)
from engine.store.schema import heartbeats, releases, reports, rollout_devices, rollouts

__all__ = [
    "FINISHED_ROLLOUT_STATES",
    "GateRow",
    "JudgedDevice",
    "RolloutRow",
    "busy_devices",
    "devices_to_judge",
    "end_rollouts",
    "gate_rows",
    "has_attempts",
    "live_rollout_ids",
    "lock_rollout",
    "move_device",
    "move_devices",
    "move_rollout",
    "move_rollouts",
    "offer_candidates",
    "release_recorded",
    "rolled_out_devices",
    "set_rollout",
    "unoffer_devices",
    "wave_state_counts",
]

#: Rollout states that stamp ``finished_at`` when entered.
FINISHED_ROLLOUT_STATES = frozenset(
    {RolloutState.HALTED, RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.SUPERSEDED}
)
_LIVE = [s.value for s in LIVE_ROLLOUT_STATES]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RolloutRow:
    """One ``rollouts`` row."""

    id: int
    name: str
    group_name: str
    release: str
    release_sha256: str | None
    priority: int
    policy: str  # JSON of inventory.models.RolloutPolicy
    maintenance_window: str | None  # JSON of MaintenanceWindow
    state: RolloutState
    reason: str | None
    current_wave: int
    wave_opened_at: datetime | None
    wave_met_at: datetime | None
    resumed_at: datetime | None
    finished_at: datetime | None
    after_ids: tuple[int, ...]


@dataclass(frozen=True)
class GateRow:
    """A gate rollout of a waiting one: what deciding on the gate needs."""

    id: int
    name: str
    state: RolloutState
    reason: str | None
    policy: str
    finished_at: datetime | None


@dataclass(frozen=True)
class JudgedDevice:
    """A device that took a plan, with what its report and heartbeat show."""

    device: str
    from_version: str | None
    seen: DeviceObservation


# -- rollouts -----------------------------------------------------------------------------


def live_rollout_ids(conn: Connection) -> list[int]:
    """Ids of the rollouts the controller still looks at, oldest first."""
    query = select(rollouts.c.id).where(rollouts.c.state.in_(_LIVE)).order_by(rollouts.c.id)
    return [int(i) for (i,) in conn.execute(query)]


def lock_rollout(conn: Connection, rollout_id: int) -> RolloutRow | None:
    """The rollout, locked for this transaction (PostgreSQL), or None when there is none."""
    r = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id).with_for_update()).first()
    if r is None:
        return None
    return RolloutRow(
        id=int(r.id),
        name=r.name,
        group_name=r.group_name,
        release=r.release,
        release_sha256=r.release_sha256,
        priority=int(r.priority),
        policy=r.policy,
        maintenance_window=r.maintenance_window,
        state=RolloutState(r.state),
        reason=r.reason,
        current_wave=int(r.current_wave),
        wave_opened_at=r.wave_opened_at,
        wave_met_at=r.wave_met_at,
        resumed_at=r.resumed_at,
        finished_at=r.finished_at,
        after_ids=tuple(int(i) for i in json.loads(r.after_ids or "[]")),
    )


def move_rollout(
    conn: Connection,
    rollout_id: int,
    state: RolloutState,
    event: RolloutEvent,
    *,
    reason: str,
    now: datetime,
    **values: Any,
) -> RolloutState:
    """Move a rollout known to be in ``state`` on ``event``; the new state.

    Other columns in ``values`` are written with it. Raises
    IllegalTransitionError when the table forbids it or the row is no longer
    in ``state``.
    """
    to = next_rollout_state(state, event)
    if to in FINISHED_ROLLOUT_STATES:
        values["finished_at"] = now
    done = conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rollout_id, rollouts.c.state == state.value)
        .values(state=to.value, reason=reason, updated_at=now, **values)
    )
    if done.rowcount != 1:
        raise IllegalTransitionError(f"rollout #{rollout_id} is no longer {state.value}")
    return to


def move_rollouts(
    conn: Connection, ids: Sequence[int], event: RolloutEvent, *, reason: str, now: datetime
) -> None:
    """Move every rollout of ``ids`` on ``event`` when the table allows it from its state."""
    sources = rollout_sources(event)
    to = {next_rollout_state(s, event) for s in sources}
    (target,) = to
    values: dict[str, Any] = {"state": target.value, "reason": reason, "updated_at": now}
    if target in FINISHED_ROLLOUT_STATES:
        values["finished_at"] = now
    conn.execute(
        update(rollouts)
        .where(rollouts.c.id.in_(ids), rollouts.c.state.in_([s.value for s in sources]))
        .values(**values)
    )


def set_rollout(conn: Connection, rollout_id: int, **values: Any) -> None:
    """Write columns of a rollout other than its state (reason, wave bookkeeping)."""
    if "state" in values:
        raise IllegalTransitionError("a rollout's state changes through move_rollout only")
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))


def gate_rows(conn: Connection, ids: Sequence[int]) -> list[GateRow]:
    """The gate rollouts ``ids`` in that order (a gate row never goes away)."""
    rows = conn.execute(
        select(
            rollouts.c.id,
            rollouts.c.name,
            rollouts.c.state,
            rollouts.c.reason,
            rollouts.c.policy,
            rollouts.c.finished_at,
        ).where(rollouts.c.id.in_(ids))
    )
    by_id = {
        int(g.id): GateRow(
            int(g.id), g.name, RolloutState(g.state), g.reason, g.policy, g.finished_at
        )
        for g in rows
    }
    return [by_id[i] for i in ids if i in by_id]


def has_attempts(conn: Connection, rollout_id: int) -> bool:
    """Whether any device of the rollout took a plan (needed a change)."""
    found = conn.execute(
        select(rollout_devices.c.device)
        .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.attempts > 0)
        .limit(1)
    ).first()
    return found is not None


def release_recorded(conn: Connection, version: str) -> bool:
    """Whether ``version``'s manifest is in the store (so devices can be sent to it)."""
    found = conn.execute(select(releases.c.version).where(releases.c.version == version))
    return found.first() is not None


# -- devices ------------------------------------------------------------------------------


def move_device(
    conn: Connection,
    rollout_id: int,
    device: str,
    state: DeviceState,
    event: DeviceEvent,
    *,
    now: datetime,
    **values: Any,
) -> DeviceState:
    """Move a rollout's device known to be in ``state`` on ``event``; the new state.

    Other columns in ``values`` are written with it; a row no longer in
    ``state`` is left alone. Raises IllegalTransitionError when the table
    forbids the change.
    """
    to = next_device_state(state, event)
    rd = rollout_devices
    conn.execute(
        update(rd)
        .where(rd.c.rollout_id == rollout_id, rd.c.device == device, rd.c.state == state.value)
        .values(state=to.value, updated_at=now, **values)
    )
    return to


def move_devices(
    conn: Connection,
    rollout_ids: Sequence[int],
    event: DeviceEvent,
    *,
    now: datetime,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> None:
    """Move every device of ``rollout_ids`` whose state allows ``event`` (and ``where``)."""
    sources = device_sources(event)
    to = next_device_state(sources[0], event)
    rd = rollout_devices
    conn.execute(
        update(rd)
        .where(
            rd.c.rollout_id.in_(rollout_ids),
            rd.c.state.in_([s.value for s in sources]),
            *where,
        )
        .values(state=to.value, updated_at=now, **values)
    )


def unoffer_devices(conn: Connection, rollout_id: int, now: datetime) -> None:
    """Take back offers not yet taken: those devices are pending again."""
    move_devices(conn, [rollout_id], DeviceEvent.UNOFFER, now=now, offered_at=None)


def end_rollouts(
    conn: Connection, ids: Sequence[int], event: RolloutEvent, reason: str, now: datetime
) -> None:
    """Abort or supersede the rollouts ``ids`` and cancel their devices still open."""
    move_rollouts(conn, ids, event, reason=reason, now=now)
    move_devices(conn, ids, DeviceEvent.CANCEL, now=now, reason=reason)


def devices_to_judge(conn: Connection, rollout_id: int) -> list[JudgedDevice]:
    """Devices updating or rolling back, with their stored report and heartbeat."""
    rd = rollout_devices
    rows = conn.execute(
        select(
            rd.c.device,
            rd.c.state,
            rd.c.started_at,
            rd.c.attempts,
            rd.c.from_version,
            rd.c.rollback_to,
            reports.c.agent_version,
            reports.c.last_result,
            reports.c.last_seen,
            reports.c.agent_running,
            heartbeats.c.version.label("hb_version"),
            heartbeats.c.received_at.label("hb_at"),
        )
        .select_from(
            rd.outerjoin(reports, reports.c.device == rd.c.device).outerjoin(
                heartbeats, heartbeats.c.device == rd.c.device
            )
        )
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.state.in_([DeviceState.IN_PROGRESS.value, DeviceState.ROLLING_BACK.value]),
        )
    )
    return [
        JudgedDevice(
            device=row.device,
            from_version=row.from_version,
            seen=DeviceObservation(
                state=DeviceState(row.state),
                started_at=row.started_at,
                attempts=int(row.attempts),
                rollback_to=row.rollback_to,
                agent_version=row.agent_version,
                last_result=row.last_result,
                last_seen=row.last_seen,
                agent_running=row.agent_running,
                heartbeat_version=row.hb_version,
                heartbeat_at=row.hb_at,
            ),
        )
        for row in rows
    ]


def rolled_out_devices(conn: Connection, rollout_id: int) -> list[tuple[str, str | None]]:
    """(device, from_version) of devices that took the release and succeeded."""
    rows = conn.execute(
        select(rollout_devices.c.device, rollout_devices.c.from_version).where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.state == DeviceState.SUCCEEDED.value,
            rollout_devices.c.attempts > 0,
        )
    )
    return [(str(d), v) for d, v in rows]


def wave_state_counts(
    conn: Connection, rollout_id: int, resumed_at: datetime | None
) -> list[WaveStateCount]:
    """The rollout's devices counted per (wave, state); failures only after ``resumed_at``."""
    rd = rollout_devices
    finished = rd.c.finished_at
    since = resumed_at or _EPOCH
    rows = conn.execute(
        select(
            rd.c.wave,
            rd.c.state,
            func.count(),
            func.sum(case((rd.c.attempts > 0, 1), else_=0)),
            func.sum(case((and_(finished.is_not(None), finished > since), 1), else_=0)),
            func.sum(case((rd.c.retry_at.is_not(None), 1), else_=0)),
        )
        .where(rd.c.rollout_id == rollout_id)
        .group_by(rd.c.wave, rd.c.state)
    )
    return [
        WaveStateCount(
            int(wave),
            DeviceState(state),
            int(count),
            int(attempted or 0),
            int(after or 0),
            int(retrying or 0),
        )
        for wave, state, count, attempted, after, retrying in rows
    ]


def busy_devices(conn: Connection, rollout_id: int) -> int:
    """How many devices of the rollout hold a slot (offered or in progress)."""
    rd = rollout_devices
    found = conn.execute(
        select(func.count()).where(
            rd.c.rollout_id == rollout_id,
            rd.c.state.in_([DeviceState.OFFERED.value, DeviceState.IN_PROGRESS.value]),
        )
    ).scalar_one()
    return int(found)


def offer_candidates(
    conn: Connection,
    rollout_id: int,
    *,
    last_wave: int,
    online_since: datetime,
    now: datetime,
    limit: int,
) -> list[tuple[str, str | None]]:
    """(device, reported version) of pending online devices of waves up to ``last_wave``.

    In wave order, then stable position; devices waiting for a retry time left out.
    """
    rd = rollout_devices
    rows = conn.execute(
        select(rd.c.device, reports.c.agent_version)
        .select_from(rd.join(reports, reports.c.device == rd.c.device))
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.state == DeviceState.PENDING.value,
            rd.c.wave <= last_wave,
            or_(rd.c.retry_at.is_(None), rd.c.retry_at <= now),
            reports.c.last_seen >= online_since,
        )
        .order_by(rd.c.wave, rd.c.position)
        .limit(limit)
    )
    return [(str(d), v) for d, v in rows]
