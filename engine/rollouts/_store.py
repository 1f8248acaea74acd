"""The rollout tables as typed rows, and every state write through the transition tables.

The controller, apply (``record``) and operator actions (``ops``) read and
write ``rollouts`` and ``rollout_devices`` here. A state is written only by
:func:`move_rollout` / :func:`move_rollouts` and :func:`move_device` /
:func:`move_devices`, which take an event, look the next state up in
``transitions`` and guard the UPDATE with the source state(s), so a row that
changed meanwhile is left alone. The check-in fast path in ``offers`` builds
its two statements from the same tables; reads are in ``_reads``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from engine.rollouts.errors import IllegalTransitionError
from engine.rollouts.model import DeviceState, RolloutState
from engine.rollouts.transitions import (
    DeviceEvent,
    RolloutEvent,
    device_sources,
    next_device_state,
    next_rollout_state,
    rollout_sources,
)
from engine.store.schema import rollout_devices, rollouts

__all__ = [
    "FINISHED_ROLLOUT_STATES",
    "RolloutRow",
    "clear_waiting_reasons",
    "end_rollouts",
    "lock_rollout",
    "move_device",
    "move_devices",
    "move_listed",
    "move_rollout",
    "move_rollouts",
    "of_rollout",
    "set_rollout",
    "unoffer_devices",
]

#: Rollout states that stamp ``finished_at`` when entered.
FINISHED_ROLLOUT_STATES = frozenset(
    {RolloutState.HALTED, RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.SUPERSEDED}
)


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
    component: str = "agent"  # or "runtime" (migration 14)


# -- rollouts -----------------------------------------------------------------------------


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
        component=r.component,
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
    if to is RolloutState.COMPLETED:
        values["completed_at"] = now
    elif to is RolloutState.HALTED:
        values["completed_at"] = None  # halted during its soak: it no longer counts as completed
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
    if target is RolloutState.COMPLETED:
        values["completed_at"] = now
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


# -- devices ------------------------------------------------------------------------------


def of_rollout(rollout_id: int) -> ColumnElement[bool]:
    """The condition "row of rollout ``rollout_id``" for statements about named devices."""
    # ``rollout_id + 0``, not ``rollout_id``: the index on (rollout_id, state, ...) then
    # cannot be used for them, and the one on (device, state) is. Without fresh statistics
    # (right after `engine apply` wrote a large rollout, or with autovacuum off) PostgreSQL
    # and SQLite both picked the former and read every row of the rollout in that state
    # for each device: at 100,000 devices, a few devices a second.
    return rollout_devices.c.rollout_id + 0 == rollout_id


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
        .where(of_rollout(rollout_id), rd.c.device == device, rd.c.state == state.value)
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


def clear_waiting_reasons(conn: Connection, rollout_id: int, devices: Sequence[str]) -> None:
    """Forget why ``devices`` waited for their runtime: they were offered the release."""
    if not devices:
        return
    rd = rollout_devices
    conn.execute(
        update(rd)
        .where(
            of_rollout(rollout_id),
            rd.c.device.in_(list(devices)),
            rd.c.requires_runtime.is_not(None),
        )
        .values(reason=None)
    )


#: Devices per statement in ``move_listed``: under SQLite's limit of bound parameters, and
#: short enough that one statement never holds the store for long.
LISTED_CHUNK = 500


def move_listed(
    conn: Connection,
    rollout_id: int,
    devices: Sequence[str],
    state: DeviceState,
    event: DeviceEvent,
    *,
    now: datetime,
    **values: Any,
) -> None:
    """``move_device`` for each of ``devices`` (all known to be in ``state``), with the same
    ``values``: a few set-based statements instead of one per device."""
    to = next_device_state(state, event)
    rd = rollout_devices
    for start in range(0, len(devices), LISTED_CHUNK):
        chunk = devices[start : start + LISTED_CHUNK]
        conn.execute(
            update(rd)
            .where(of_rollout(rollout_id), rd.c.device.in_(chunk), rd.c.state == state.value)
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
