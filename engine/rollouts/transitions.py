"""Every legal state change of a rollout and of a rollout's device, as two tables.

``ROLLOUT_TRANSITIONS`` and ``DEVICE_TRANSITIONS`` map ``(state, event)`` to
the next state. Every write of ``rollouts.state`` or ``rollout_devices.state``
goes through :func:`next_rollout_state` / :func:`next_device_state` (one row
whose state is known) or :func:`rollout_sources` / :func:`device_sources` (a
set-based UPDATE whose WHERE clause is the table's source states for the
event), so a change the tables do not list cannot happen. Nothing here does
IO; docs/rollouts.md shows the tables as :func:`render_tables` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from engine.rollouts.errors import IllegalTransitionError
from engine.rollouts.model import DeviceState, RolloutState

__all__ = [
    "DEVICE_TRANSITIONS",
    "INITIAL_DEVICE_STATES",
    "INITIAL_ROLLOUT_STATE",
    "ROLLOUT_TRANSITIONS",
    "DeviceEvent",
    "RolloutEvent",
    "device_sources",
    "next_device_state",
    "next_rollout_state",
    "render_tables",
    "rollout_sources",
]


class RolloutEvent(StrEnum):
    """What moves a rollout."""

    WAIT_FOR_GATES = "wait_for_gates"  # apply found gate rollouts (rollout.after) for it
    GATES_PASSED = "gates_passed"  # every gate completed and soaked: wave 0 opens
    PAUSE = "pause"  # by an operator, or the failure rate with on_failure: pause
    HALT = "halt"  # the failure rate with on_failure: halt, or a gate failed
    RESUME = "resume"  # an operator resumed it after its first wave opened
    RESUME_WAITING = "resume_waiting"  # resumed before its first wave opened: waits again
    COMPLETE = "complete"  # the last wave reached its goal and no device is busy
    ABORT = "abort"  # an operator stopped it
    SUPERSEDE = "supersede"  # apply recorded a newer rollout of the same group


class DeviceEvent(StrEnum):
    """What moves one device of a rollout."""

    OFFER = "offer"  # the controller gives it a slot
    UNOFFER = "unoffer"  # the slot is taken back (offer_ttl, pause, halt)
    TAKE = "take"  # its check-in got the plan (update or rollback)
    ON_RELEASE = "on_release"  # it reports the release before it was offered
    SUCCEED = "succeed"  # its reports show the target (or the rollback target) healthy
    FAIL = "fail"  # it reported a failed transaction
    TIME_OUT = "time_out"  # no outcome within update_timeout of taking the plan
    RETRY = "retry"  # its retry time came
    REGRESS = "regress"  # its agent's CPU or memory grew past the policy's limit
    ROLL_BACK = "roll_back"  # the rollout halted and it runs the release: send it back
    NO_ROLLBACK = "no_rollback"  # it should go back, but the old release is not recorded
    CANCEL = "cancel"  # the rollout was aborted or superseded
    OVERRIDE = "override"  # a higher-priority rollout of another group holds it


R = RolloutState
E = RolloutEvent
D = DeviceState
V = DeviceEvent

#: The state a rollout is recorded in (apply).
INITIAL_ROLLOUT_STATE = R.ACTIVE
#: The states a device is recorded in (apply): changing or without a report,
#: already on the release, pinned or blocked.
INITIAL_DEVICE_STATES = frozenset({D.PENDING, D.SUCCEEDED, D.EXCLUDED})

ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (R.ACTIVE, E.WAIT_FOR_GATES): R.WAITING,  # only in the apply that records it
    (R.ACTIVE, E.PAUSE): R.PAUSED,
    (R.ACTIVE, E.HALT): R.HALTED,
    (R.ACTIVE, E.COMPLETE): R.COMPLETED,
    (R.ACTIVE, E.ABORT): R.ABORTED,
    (R.ACTIVE, E.SUPERSEDE): R.SUPERSEDED,
    (R.WAITING, E.GATES_PASSED): R.ACTIVE,
    (R.WAITING, E.PAUSE): R.PAUSED,
    (R.WAITING, E.HALT): R.HALTED,  # a gate halted, was aborted or superseded
    (R.WAITING, E.ABORT): R.ABORTED,
    (R.WAITING, E.SUPERSEDE): R.SUPERSEDED,
    (R.PAUSED, E.RESUME): R.ACTIVE,
    (R.PAUSED, E.RESUME_WAITING): R.WAITING,
    (R.PAUSED, E.ABORT): R.ABORTED,
    (R.PAUSED, E.SUPERSEDE): R.SUPERSEDED,
    (R.HALTED, E.ABORT): R.ABORTED,
    (R.HALTED, E.SUPERSEDE): R.SUPERSEDED,
    (R.COMPLETED, E.HALT): R.HALTED,  # a performance failure during its soak
    (R.COMPLETED, E.SUPERSEDE): R.SUPERSEDED,
}

DEVICE_TRANSITIONS: dict[tuple[DeviceState, DeviceEvent], DeviceState] = {
    (D.PENDING, V.OFFER): D.OFFERED,
    (D.PENDING, V.ON_RELEASE): D.SUCCEEDED,
    (D.PENDING, V.CANCEL): D.CANCELLED,
    (D.PENDING, V.OVERRIDE): D.OVERRIDDEN,
    (D.OFFERED, V.TAKE): D.IN_PROGRESS,
    (D.OFFERED, V.UNOFFER): D.PENDING,
    (D.OFFERED, V.CANCEL): D.CANCELLED,
    (D.OFFERED, V.OVERRIDE): D.OVERRIDDEN,
    (D.IN_PROGRESS, V.SUCCEED): D.SUCCEEDED,
    (D.IN_PROGRESS, V.FAIL): D.FAILED,
    (D.IN_PROGRESS, V.TIME_OUT): D.TIMED_OUT,
    (D.IN_PROGRESS, V.ROLL_BACK): D.ROLLBACK,  # succeeded after the rollout halted
    (D.IN_PROGRESS, V.NO_ROLLBACK): D.ROLLBACK_FAILED,
    (D.IN_PROGRESS, V.REGRESS): D.REGRESSED,
    (D.IN_PROGRESS, V.CANCEL): D.CANCELLED,
    (D.IN_PROGRESS, V.OVERRIDE): D.OVERRIDDEN,
    (D.SUCCEEDED, V.ROLL_BACK): D.ROLLBACK,
    (D.SUCCEEDED, V.NO_ROLLBACK): D.ROLLBACK_FAILED,
    (D.SUCCEEDED, V.REGRESS): D.REGRESSED,
    (D.SUCCEEDED, V.OVERRIDE): D.OVERRIDDEN,
    (D.FAILED, V.RETRY): D.PENDING,
    (D.FAILED, V.OVERRIDE): D.OVERRIDDEN,
    (D.TIMED_OUT, V.RETRY): D.PENDING,
    (D.TIMED_OUT, V.OVERRIDE): D.OVERRIDDEN,
    (D.REGRESSED, V.OVERRIDE): D.OVERRIDDEN,
    (D.ROLLBACK, V.TAKE): D.ROLLING_BACK,
    (D.ROLLBACK, V.CANCEL): D.CANCELLED,
    (D.ROLLBACK, V.OVERRIDE): D.OVERRIDDEN,
    (D.ROLLING_BACK, V.SUCCEED): D.ROLLED_BACK,
    (D.ROLLING_BACK, V.FAIL): D.ROLLBACK_FAILED,
    (D.ROLLING_BACK, V.TIME_OUT): D.ROLLBACK_FAILED,
    (D.ROLLING_BACK, V.CANCEL): D.CANCELLED,
    (D.ROLLING_BACK, V.OVERRIDE): D.OVERRIDDEN,
    (D.ROLLED_BACK, V.OVERRIDE): D.OVERRIDDEN,
    (D.ROLLBACK_FAILED, V.OVERRIDE): D.OVERRIDDEN,
    (D.EXCLUDED, V.OVERRIDE): D.OVERRIDDEN,  # only the new rollout's own rows (apply)
}

del R, E, D, V

_S = TypeVar("_S", RolloutState, DeviceState)
_E = TypeVar("_E", RolloutEvent, DeviceEvent)


def next_rollout_state(state: RolloutState, event: RolloutEvent) -> RolloutState:
    """The state a rollout in ``state`` moves to on ``event``.

    Raises IllegalTransitionError when the table has no such row.
    """
    return _next(ROLLOUT_TRANSITIONS, state, event, "rollout")


def next_device_state(state: DeviceState, event: DeviceEvent) -> DeviceState:
    """The state a rollout's device in ``state`` moves to on ``event``.

    Raises IllegalTransitionError when the table has no such row.
    """
    return _next(DEVICE_TRANSITIONS, state, event, "device")


def rollout_sources(event: RolloutEvent) -> list[RolloutState]:
    """The states a rollout may be in for ``event`` (the WHERE of a set-based UPDATE)."""
    return [s for (s, e) in ROLLOUT_TRANSITIONS if e is event]


def device_sources(event: DeviceEvent, target: DeviceState | None = None) -> list[DeviceState]:
    """The states a device may be in for ``event`` (leading to ``target`` when given).

    A set-based UPDATE writes one new state, so callers pass ``target`` when
    the event leads to several; raises IllegalTransitionError when no row
    matches.
    """
    found = [
        s
        for (s, e), to in DEVICE_TRANSITIONS.items()
        if e is event and (target is None or to is target)
    ]
    targets = {DEVICE_TRANSITIONS[(s, event)] for s in found}
    if not found or len(targets) != 1:
        raise IllegalTransitionError(
            f"device event {event.value} leads to {sorted(t.value for t in targets) or 'nothing'}"
            + (f", not only {target.value}" if target is not None else "")
        )
    return found


def _next(table: Mapping[tuple[_S, _E], _S], state: _S, event: _E, kind: str) -> _S:
    found = table.get((state, event))
    if found is not None:
        return found
    events = [e.value for (s, e) in table if s is state]
    allowed = ", ".join(events) if events else "nothing (final state)"
    raise IllegalTransitionError(f"a {state.value} {kind} cannot {event.value}; allowed: {allowed}")


def _render(table: Mapping[tuple[_S, _E], _S], kind: str) -> str:
    lines = [f"| {kind} state | event | next state |", "|---|---|---|"]
    lines += [f"| {s.value} | {e.value} | {to.value} |" for (s, e), to in table.items()]
    return "\n".join(lines)


def render_tables() -> str:
    """Both tables as docs/rollouts.md shows them (``scripts/rollout-tables`` rewrites them)."""
    return (
        _render(ROLLOUT_TRANSITIONS, "rollout")
        + "\n\n"
        + _render(DEVICE_TRANSITIONS, "device")
        + "\n"
    )
