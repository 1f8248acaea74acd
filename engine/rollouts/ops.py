"""Operator actions on a rollout: pause, resume, abort (CLI and operator API)."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, select, update

from engine.rollouts.errors import RolloutNotFoundError, RolloutStateError
from engine.rollouts.model import OPEN_DEVICE_STATES, DeviceState, RolloutState
from engine.store.schema import rollout_devices, rollouts

__all__ = ["abort_rollout", "end_rollouts", "pause_rollout", "resume_rollout", "unoffer_devices"]


def end_rollouts(
    conn: Connection, ids: list[int], state: RolloutState, reason: str, now: datetime
) -> None:
    """Finish the rollouts ``ids`` in ``state`` and cancel their devices still open."""
    conn.execute(
        update(rollouts)
        .where(rollouts.c.id.in_(ids))
        .values(state=state.value, reason=reason, finished_at=now, updated_at=now)
    )
    conn.execute(
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id.in_(ids),
            rollout_devices.c.state.in_([s.value for s in OPEN_DEVICE_STATES]),
        )
        .values(state=DeviceState.CANCELLED.value, reason=reason, updated_at=now)
    )


def unoffer_devices(conn: Connection, rollout_id: int, now: datetime) -> None:
    """Take back offers not yet taken: those devices are pending again."""
    conn.execute(
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.state == DeviceState.OFFERED.value,
        )
        .values(state=DeviceState.PENDING.value, offered_at=None, updated_at=now)
    )


def _state(conn: Connection, rollout_id: int) -> RolloutState:
    row = conn.execute(
        select(rollouts.c.state).where(rollouts.c.id == rollout_id).with_for_update()
    ).first()
    if row is None:
        raise RolloutNotFoundError(f"no rollout #{rollout_id}")
    return RolloutState(row[0])


def pause_rollout(
    conn: Connection, rollout_id: int, now: datetime, *, by: str = "operator"
) -> None:
    """Stop handing out the release; devices already updating finish.

    Offered devices that did not take their plan yet give their slot back; a
    waiting rollout (rollout.after) stays closed even once its gates complete.
    Raises RolloutStateError unless the rollout is active or waiting.
    """
    state = _state(conn, rollout_id)
    if state is RolloutState.PAUSED:
        return
    if state not in (RolloutState.ACTIVE, RolloutState.WAITING):
        raise RolloutStateError(
            f"rollout #{rollout_id} is {state.value}; only an active or waiting one pauses"
        )
    conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rollout_id)
        .values(state=RolloutState.PAUSED.value, reason=f"paused by {by}", updated_at=now)
    )
    unoffer_devices(conn, rollout_id, now)


def resume_rollout(
    conn: Connection, rollout_id: int, now: datetime, *, by: str = "operator"
) -> None:
    """Reopen a paused rollout; failures before now no longer count against its waves.

    The current wave's soak starts again. A rollout paused before its first
    wave opened goes back to waiting for its gate rollouts (rollout.after).
    Raises RolloutStateError unless the rollout is paused (a halted rollout
    rolled its devices back: apply again).
    """
    state = _state(conn, rollout_id)
    if state in (RolloutState.ACTIVE, RolloutState.WAITING):
        return
    if state is not RolloutState.PAUSED:
        hint = (
            "; apply the release again to start a new rollout"
            if state
            in (
                RolloutState.HALTED,
                RolloutState.ABORTED,
            )
            else ""
        )
        raise RolloutStateError(
            f"rollout #{rollout_id} is {state.value}; only a paused one resumes{hint}"
        )
    gated = conn.execute(
        select(rollouts.c.wave_opened_at, rollouts.c.after_ids).where(rollouts.c.id == rollout_id)
    ).one()
    waits = gated.wave_opened_at is None and bool(json.loads(gated.after_ids or "[]"))
    conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rollout_id)
        .values(
            state=(RolloutState.WAITING if waits else RolloutState.ACTIVE).value,
            reason=f"resumed by {by}",
            resumed_at=now,
            wave_met_at=None,
            updated_at=now,
        )
    )


def abort_rollout(
    conn: Connection, rollout_id: int, now: datetime, *, by: str = "operator"
) -> None:
    """Stop the rollout for good: nothing more is handed out, rollbacks included.

    Devices not finished are marked cancelled (one updating at this moment
    finishes on its own; its report still shows where it ended). Raises
    RolloutStateError for a completed, superseded or already aborted rollout.
    """
    state = _state(conn, rollout_id)
    if state not in (
        RolloutState.WAITING,
        RolloutState.ACTIVE,
        RolloutState.PAUSED,
        RolloutState.HALTED,
    ):
        raise RolloutStateError(
            f"rollout #{rollout_id} is {state.value}; "
            "only a waiting, active, paused or halted one aborts"
        )
    end_rollouts(conn, [rollout_id], RolloutState.ABORTED, f"aborted by {by}", now)
