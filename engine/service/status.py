"""Read the fleet's status: rollouts with per-wave counts and the agent versions."""

from __future__ import annotations

from datetime import datetime

from engine.rollouts.status import FleetStatus, fleet_status, resolve_rollout
from engine.store import Store
from fleetbase.clock import utc_now

__all__ = ["read_status"]


def read_status(
    store: Store, *, rollout: str | None = None, now: datetime | None = None
) -> FleetStatus:
    """Every rollout (or only ``rollout``: a number or group@release), the fleet's versions and
    the agent's CPU and memory per release.

    Raises RolloutNotFoundError for an unknown ``rollout`` and StoreError when
    the store cannot be read.
    """
    when = now if now is not None else utc_now()
    with store.read() as conn:
        rollout_id = resolve_rollout(conn, rollout) if rollout else None
        return fleet_status(conn, now=when, rollout_id=rollout_id, performance=True)
