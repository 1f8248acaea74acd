"""States of rollouts and of their devices, and the controller's timing settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from enum import StrEnum
from typing import Any

from fleetbase.duration import parse_duration

__all__ = [
    "ACTIVE_DEVICE_STATES",
    "FAILED_STATES",
    "LIVE_ROLLOUT_STATES",
    "NOT_COUNTED_STATES",
    "OPEN_DEVICE_STATES",
    "TERMINAL_DEVICE_STATES",
    "DeviceState",
    "RolloutState",
    "Timings",
]


class RolloutState(StrEnum):
    """Where a rollout is; see docs/rollouts.md for the transitions."""

    WAITING = "waiting"  # rollout.after: the gate rollouts have not completed and soaked yet
    ACTIVE = "active"  # waves open as they meet their success rate and soak
    PAUSED = "paused"  # no new offers; devices already updating finish
    HALTED = "halted"  # failure rate crossed: devices that took the release roll back
    COMPLETED = "completed"  # the last wave met its success rate; stragglers still update
    ABORTED = "aborted"  # an operator stopped it: nothing more is handed out
    SUPERSEDED = "superseded"  # a newer rollout of the same group replaced it


#: Rollouts the controller still looks at.
LIVE_ROLLOUT_STATES = frozenset(
    {
        RolloutState.WAITING,
        RolloutState.ACTIVE,
        RolloutState.PAUSED,
        RolloutState.HALTED,
        RolloutState.COMPLETED,
    }
)


class DeviceState(StrEnum):
    """Where one device of a rollout is."""

    PENDING = "pending"  # waits for its wave, a free slot, to be online, or a retry time
    OFFERED = "offered"  # given a slot: its next check-in inside the window gets the plan
    IN_PROGRESS = "in_progress"  # took the plan; its reports decide the outcome
    SUCCEEDED = "succeeded"  # runs the release and heartbeats (or already did at apply)
    FAILED = "failed"  # the attempt failed; retried at retry_at while attempts remain
    TIMED_OUT = "timed_out"  # went silent after taking the plan; counts as failed
    #: runs the release but its agent's CPU or memory grew past max_cpu/rss_increase:
    #: counts as failed, and its check-ins get a rollback plan until it is back
    REGRESSED = "regressed"
    ROLLBACK = "rollback"  # the rollout halted: its next check-in gets a rollback plan
    ROLLING_BACK = "rolling_back"  # took the rollback plan
    ROLLED_BACK = "rolled_back"  # back on its previous release
    ROLLBACK_FAILED = "rollback_failed"  # the rollback did not bring the previous release back
    EXCLUDED = "excluded"  # not moved by this rollout (pinned, blocked); see reason
    OVERRIDDEN = "overridden"  # a higher-priority rollout holds this device
    CANCELLED = "cancelled"  # the rollout was aborted or superseded before it finished here


#: States that no longer change (retries aside: FAILED/TIMED_OUT with retry_at set move on).
TERMINAL_DEVICE_STATES = frozenset(
    {
        DeviceState.SUCCEEDED,
        DeviceState.FAILED,
        DeviceState.TIMED_OUT,
        DeviceState.REGRESSED,
        DeviceState.ROLLED_BACK,
        DeviceState.ROLLBACK_FAILED,
        DeviceState.EXCLUDED,
        DeviceState.OVERRIDDEN,
        DeviceState.CANCELLED,
    }
)

#: States in which a device holds one of the rollout's ``max_parallel`` slots.
ACTIVE_DEVICE_STATES = frozenset({DeviceState.OFFERED, DeviceState.IN_PROGRESS})

#: States a device is in until the rollout is done with it; aborting or superseding
#: the rollout cancels them.
OPEN_DEVICE_STATES = frozenset(
    {
        DeviceState.PENDING,
        DeviceState.OFFERED,
        DeviceState.IN_PROGRESS,
        DeviceState.ROLLBACK,
        DeviceState.ROLLING_BACK,
    }
)

#: States that count against a wave's failure rate.
FAILED_STATES = frozenset({DeviceState.FAILED, DeviceState.TIMED_OUT, DeviceState.REGRESSED})

#: States that do not count in a wave's size.
NOT_COUNTED_STATES = frozenset(
    {DeviceState.EXCLUDED, DeviceState.OVERRIDDEN, DeviceState.CANCELLED}
)


@dataclass(frozen=True)
class Timings:
    """The controller's deadlines; defaults suit a real fleet, tests and demos compress them.

    - ``update_timeout``: a device that took a plan and has no outcome after this
      is ``timed_out`` (it counts as failed; it is retried if attempts remain).
    - ``max_attempts``: attempts per device (first try plus retries).
    - ``retry_backoff``: wait before retry n is ``retry_backoff * 2**(n-1)``.
    - ``offline_after``: a device not seen for this long is offline: it is not
      given a slot, and status lists it as offline.
    - ``offer_ttl``: an offered device that does not check in within this gives
      its slot back (it is offered again once it is seen).
    - ``lease_ttl``: how long a SQLite controller lease lasts without renewal.
    - ``poll_interval``: how often devices check in (``engine serve`` passes its
      own). With it, free slots go to the pending devices due to check in soonest
      (seen longest ago, but not overdue), so that an offer waits a fraction of a
      poll interval, not half of one on average; without it, in stable position.
    """

    update_timeout: timedelta = timedelta(minutes=15)
    max_attempts: int = 3
    retry_backoff: timedelta = timedelta(minutes=1)
    offline_after: timedelta = timedelta(minutes=15)
    offer_ttl: timedelta = timedelta(minutes=10)
    lease_ttl: timedelta = timedelta(seconds=5)
    poll_interval: timedelta | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Timings:
        """Defaults, overridden by ``ENGINE_ROLLOUT_<FIELD>`` variables (durations like 30s).

        E.g. ENGINE_ROLLOUT_UPDATE_TIMEOUT=2m, ENGINE_ROLLOUT_MAX_ATTEMPTS=2: demos and
        end-to-end tests compress the timings of a real ``engine serve`` this way.
        Raises ValueError naming the variable when a value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"ENGINE_ROLLOUT_{f.name.upper()}"
            raw = env.get(name)
            if not raw:
                continue
            try:
                values[f.name] = int(raw) if f.name == "max_attempts" else parse_duration(raw)
            except ValueError as e:
                raise ValueError(f"${name}={raw!r}: {e}") from e
        return cls(**values)

    def retry_delay(self, attempts: int) -> timedelta:
        """How long a device waits after its ``attempts``-th failed attempt."""
        factor: int = 2 ** max(0, attempts - 1)
        return self.retry_backoff * factor
