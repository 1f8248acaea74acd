"""A rollout's gates in words and numbers: what it waits for before its next wave opens.

The same counts and rules the controller uses (``_reads.wave_state_counts``,
``policy.count_waves`` and ``policy.wave_step``), read for display.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, select

from engine.rollouts import _reads
from engine.rollouts.model import RolloutState
from engine.rollouts.policy import WaveStep, count_waves, wave_step
from engine.rollouts.status import RolloutStatus
from engine.rollouts.windows import in_window, next_window_start
from engine.store.schema import rollouts
from inventory.models import MaintenanceWindow, RolloutPolicy

__all__ = ["AfterGate", "RolloutGates", "rollout_gates"]


class AfterGate(BaseModel):
    """A rollout that must complete (and soak) before this one starts."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    state: RolloutState


class RolloutGates(BaseModel):
    """The current wave against the policy, the window and the `after` gates."""

    model_config = ConfigDict(frozen=True)

    wave: int
    success_rate: float
    min_success_rate: float
    failure_rate: float
    max_failure_rate: float
    soak: float  # seconds
    soak_remaining: float | None  # seconds; None: the wave has not reached its goal
    window_open: bool
    next_window: datetime | None
    after: list[AfterGate]
    sentences: list[str]


def rollout_gates(conn: Connection, status: RolloutStatus, *, now: datetime) -> RolloutGates:
    """What holds ``status``'s rollout now, as numbers and as sentences."""
    row = conn.execute(
        select(rollouts.c.wave_met_at, rollouts.c.resumed_at).where(rollouts.c.id == status.id)
    ).one()
    policy = RolloutPolicy.model_validate(status.policy)
    waves = count_waves(
        _reads.wave_state_counts(conn, status.id, row.resumed_at), len(policy.waves)
    )
    current = min(status.current_wave, len(waves) - 1)
    counts = waves[current]
    decision = wave_step(waves, current, row.wave_met_at, policy, now)
    soak = policy.soak if counts.attempted else timedelta(0)
    remaining = None
    if decision.met_at is not None:
        remaining = max(0.0, (decision.met_at + soak - now).total_seconds())
    window = (
        MaintenanceWindow.model_validate(status.maintenance_window)
        if status.maintenance_window
        else None
    )
    window_open = in_window(window, now)
    following = None if window is None or window_open else next_window_start(window, now)
    after = []
    if status.after_ids:
        found = {
            int(i): (n, RolloutState(s))
            for i, n, s in conn.execute(
                select(rollouts.c.id, rollouts.c.name, rollouts.c.state).where(
                    rollouts.c.id.in_(status.after_ids)
                )
            )
        }
        after = [
            AfterGate(id=i, name=found[i][0], state=found[i][1])
            for i in status.after_ids
            if i in found
        ]
    words = [
        f"wave {current}: {counts.succeeded} of {counts.total} succeeded "
        f"({counts.success_rate:.0%}; needs {policy.min_success_rate:.0%})",
        f"failures {counts.failed} of {counts.total} ({counts.failure_rate:.0%}; "
        f"halts above {policy.max_failure_rate:.0%})",
    ]
    if status.state is RolloutState.ACTIVE:
        if decision.step is WaveStep.BELOW_GOAL:
            words.append("soak starts when the wave reaches its success rate")
        elif remaining:
            words.append(f"soak: {_span(remaining)} left of {_span(soak.total_seconds())}")
        elif decision.step is WaveStep.OPEN_NEXT:
            words.append("soaked: the next wave opens at the controller's next tick")
    if window is None:
        words.append("no maintenance window: devices may update at any time")
    elif window_open:
        words.append("maintenance window open")
    elif following is not None:
        words.append(f"maintenance window closed; opens {following:%Y-%m-%d %H:%M} UTC")
    waiting = [g for g in after if g.state is not RolloutState.COMPLETED]
    if status.state is RolloutState.WAITING and waiting:
        names = ", ".join(f"#{g.id} {g.name} ({g.state.value})" for g in waiting)
        words.append(f"waits for {names}")
    elif status.state is RolloutState.WAITING and after:
        words.append("its `after` rollouts completed: waits for their soak")
    return RolloutGates(
        wave=current,
        success_rate=counts.success_rate,
        min_success_rate=policy.min_success_rate,
        failure_rate=counts.failure_rate,
        max_failure_rate=policy.max_failure_rate,
        soak=soak.total_seconds(),
        soak_remaining=remaining,
        window_open=window_open,
        next_window=following,
        after=after,
        sentences=words,
    )


def _span(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"
