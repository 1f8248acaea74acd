"""Operator actions on a rollout: pause, resume, abort (CLI and operator API)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection

from engine.rollouts import _store
from engine.rollouts._store import RolloutRow, end_rollouts, unoffer_devices
from engine.rollouts.errors import RolloutNotFoundError, RolloutStateError
from engine.rollouts.model import RolloutState
from engine.rollouts.transitions import ROLLOUT_TRANSITIONS, RolloutEvent

__all__ = ["RolloutAction", "abort_rollout", "act_on_rollout", "pause_rollout", "resume_rollout"]


def _rollout(conn: Connection, rollout_id: int) -> RolloutRow:
    found = _store.lock_rollout(conn, rollout_id)
    if found is None:
        raise RolloutNotFoundError(f"no rollout #{rollout_id}")
    return found


def pause_rollout(
    conn: Connection, rollout_id: int, now: datetime, *, by: str = "operator"
) -> None:
    """Stop handing out the release; devices already updating finish.

    Offered devices that did not take their plan yet give their slot back; a
    waiting rollout (rollout.after) stays closed even once its gates complete.
    Raises RolloutStateError unless the rollout is active or waiting.
    """
    state = _rollout(conn, rollout_id).state
    if state is RolloutState.PAUSED:
        return
    if (state, RolloutEvent.PAUSE) not in ROLLOUT_TRANSITIONS:
        raise RolloutStateError(
            f"rollout #{rollout_id} is {state.value}; only an active or waiting one pauses"
        )
    _store.move_rollout(
        conn, rollout_id, state, RolloutEvent.PAUSE, reason=f"paused by {by}", now=now
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
    r = _rollout(conn, rollout_id)
    if r.state in (RolloutState.ACTIVE, RolloutState.WAITING):
        return
    if r.state is not RolloutState.PAUSED:
        hint = (
            "; apply the release again to start a new rollout"
            if r.state in (RolloutState.HALTED, RolloutState.ABORTED)
            else ""
        )
        raise RolloutStateError(
            f"rollout #{rollout_id} is {r.state.value}; only a paused one resumes{hint}"
        )
    waits = r.wave_opened_at is None and bool(r.after_ids)
    _store.move_rollout(
        conn,
        rollout_id,
        r.state,
        RolloutEvent.RESUME_WAITING if waits else RolloutEvent.RESUME,
        reason=f"resumed by {by}",
        now=now,
        resumed_at=now,
        wave_met_at=None,
    )


def abort_rollout(
    conn: Connection, rollout_id: int, now: datetime, *, by: str = "operator"
) -> None:
    """Stop the rollout for good: nothing more is handed out, rollbacks included.

    Devices not finished are marked cancelled (one updating at this moment
    finishes on its own; its report still shows where it ended). Raises
    RolloutStateError for a completed, superseded or already aborted rollout.
    """
    state = _rollout(conn, rollout_id).state
    if (state, RolloutEvent.ABORT) not in ROLLOUT_TRANSITIONS:
        raise RolloutStateError(
            f"rollout #{rollout_id} is {state.value}; "
            "only a waiting, active, paused or halted one aborts"
        )
    end_rollouts(conn, [rollout_id], RolloutEvent.ABORT, f"aborted by {by}", now)


class RolloutAction(StrEnum):
    """What an operator can do to a rollout."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


def act_on_rollout(
    conn: Connection, rollout_id: int, action: RolloutAction, now: datetime, *, by: str
) -> None:
    """Pause, resume or abort the rollout; raises what that action raises."""
    function = {
        RolloutAction.PAUSE: pause_rollout,
        RolloutAction.RESUME: resume_rollout,
        RolloutAction.ABORT: abort_rollout,
    }[action]
    function(conn, rollout_id, now, by=by)
