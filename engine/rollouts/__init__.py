"""Staged rollouts: recording applied plans, offering plans to devices, the controller.

See docs/rollouts.md for the rules (waves, soak, slots, windows, failures,
rollbacks, retries, timeouts, priorities, leader lock).
"""

from engine.rollouts.controller import RolloutController, TickEvent
from engine.rollouts.errors import RolloutError, RolloutNotFoundError, RolloutStateError
from engine.rollouts.model import DeviceState, RolloutState, Timings
from engine.rollouts.offers import Offer, offer_for_device, release_ref, server_release_ref
from engine.rollouts.ops import (
    RolloutAction,
    abort_rollout,
    act_on_rollout,
    pause_rollout,
    resume_rollout,
)
from engine.rollouts.record import ApplyResult, RecordedRollout, record_rollouts
from engine.rollouts.status import (
    FleetStatus,
    RolloutStatus,
    WaveStatus,
    fleet_status,
    fleet_versions,
    resolve_rollout,
    rollout_devices_status,
    rollout_status,
)
from engine.rollouts.webhook import WebhookSender, sign_body, verify_signature
from engine.rollouts.windows import in_window, next_window_start

__all__ = [
    "ApplyResult",
    "DeviceState",
    "FleetStatus",
    "Offer",
    "RecordedRollout",
    "RolloutAction",
    "RolloutController",
    "RolloutError",
    "RolloutNotFoundError",
    "RolloutState",
    "RolloutStateError",
    "RolloutStatus",
    "TickEvent",
    "Timings",
    "WaveStatus",
    "WebhookSender",
    "abort_rollout",
    "act_on_rollout",
    "fleet_status",
    "fleet_versions",
    "in_window",
    "next_window_start",
    "offer_for_device",
    "pause_rollout",
    "record_rollouts",
    "release_ref",
    "resolve_rollout",
    "resume_rollout",
    "rollout_devices_status",
    "rollout_status",
    "server_release_ref",
    "sign_body",
    "verify_signature",
]
