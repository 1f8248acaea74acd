"""One device in several groups' rollouts: the higher group priority keeps it (apply)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select

from engine.rollouts import _store
from engine.rollouts.model import LIVE_ROLLOUT_STATES, NOT_COUNTED_STATES, DeviceState
from engine.rollouts.transitions import DeviceEvent
from engine.store.schema import rollout_devices, rollouts

__all__ = ["resolve_overlaps"]

_LIVE_ALL = [s.value for s in LIVE_ROLLOUT_STATES]
_CHUNK = 2000


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def resolve_overlaps(
    conn: Connection,
    rollout_id: int,
    *,
    group: str,
    priority: int,
    devices: list[str],
    now: datetime,
    component: str = "agent",
) -> int:
    """Let the higher-priority live rollout keep each device also held by another group's.

    Returns how many of the new rollout's devices were overridden. On equal
    priority the newer rollout wins. Only rollouts of the same ``component`` (agent or
    runtime) compete: a device runs one agent release and one runtime release at once.
    """
    counted = [s.value for s in NOT_COUNTED_STATES]
    lost: dict[str, str] = {}
    for chunk in _chunks(devices):
        rows = conn.execute(
            select(
                rollout_devices.c.rollout_id,
                rollout_devices.c.device,
                rollout_devices.c.state,
                rollouts.c.priority,
                rollouts.c.name,
            )
            .join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
            .where(
                rollout_devices.c.device.in_(chunk),
                rollout_devices.c.rollout_id != rollout_id,
                rollouts.c.group_name != group,
                rollouts.c.component == component,
                rollouts.c.state.in_(_LIVE_ALL),
                rollout_devices.c.state.not_in(counted),
            )
        ).all()
        for other_id, device, state, other_priority, other_name in rows:
            if other_priority > priority:
                lost[device] = f"{other_name} (priority {other_priority}) holds this device"
            else:
                why = f"rollout #{rollout_id} of group {group} (priority {priority})"
                why += " holds this device"
                _store.move_device(
                    conn,
                    int(other_id),
                    device,
                    DeviceState(state),
                    DeviceEvent.OVERRIDE,
                    now=now,
                    reason=why,
                )
    for device, reason in lost.items():
        _store.move_devices(
            conn,
            [rollout_id],
            DeviceEvent.OVERRIDE,
            now=now,
            where=[rollout_devices.c.device == device],
            reason=reason,
        )
    return len(lost)
