"""Why a device or a rollout is where it is: the reads of `engine devices show`, `engine status
--rollout N`, the operator API and the dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from engine.rollouts.errors import DeviceNotFoundError
from engine.rollouts.forensics import (
    DeviceDetail,
    RolloutDevicesPage,
    device_detail,
    rollout_devices_page,
)
from engine.rollouts.model import DeviceState
from engine.rollouts.status import resolve_rollout
from engine.store import Store
from fleetbase.clock import utc_now

__all__ = ["DEFAULT_ONLINE_WITHIN", "read_device", "read_rollout_devices"]

#: A device seen within this many seconds counts as online when no server setting says
#: otherwise (the server's default: three poll intervals of 60 s).
DEFAULT_ONLINE_WITHIN = 180.0


def read_device(
    store: Store,
    device: str,
    *,
    now: datetime | None = None,
    online_within: float = DEFAULT_ONLINE_WITHIN,
) -> DeviceDetail:
    """The device's report, heartbeat, transaction, rollouts and event timeline.

    Raises DeviceNotFoundError when the store knows no such device, StoreError
    when it cannot be read.
    """
    when = now if now is not None else utc_now()
    with store.read() as conn:
        found = device_detail(conn, device, now=when, online_within=online_within)
    if found is None:
        raise DeviceNotFoundError(
            f"no device {device!r}: it never enrolled, reported or took part in a rollout"
        )
    return found


def read_rollout_devices(
    store: Store,
    rollout: str,
    *,
    states: Sequence[DeviceState] = (),
    limit: int = 100,
    offset: int = 0,
    now: datetime | None = None,
) -> RolloutDevicesPage:
    """A page of the rollout's devices (only ``states`` when given) with their last step.

    ``rollout`` is a number or group@release. Raises RolloutNotFoundError,
    StoreError.
    """
    when = now if now is not None else utc_now()
    with store.read() as conn:
        rollout_id = resolve_rollout(conn, rollout)
        return rollout_devices_page(
            conn, rollout_id, now=when, states=states, limit=limit, offset=offset
        )
