"""Root of the rollout package's exceptions."""

from __future__ import annotations

from engine.errors import EngineError

__all__ = [
    "DeviceNotFoundError",
    "IllegalTransitionError",
    "LeaseLostError",
    "RolloutError",
    "RolloutNotFoundError",
    "RolloutStateError",
]


class RolloutError(EngineError):
    """Base of every error the rollout package raises on purpose."""


class RolloutNotFoundError(RolloutError):
    """No rollout has the id or name given."""


class RolloutStateError(RolloutError):
    """The operation is not allowed in the rollout's current state (e.g. resume a completed one)."""


class IllegalTransitionError(RolloutStateError):
    """A state change the transition tables do not allow (a programming mistake)."""


class DeviceNotFoundError(RolloutError):
    """No device has the id given (never enrolled, reported or rolled out to)."""


class LeaseLostError(RolloutError):
    """This controller is no longer the leader: its write was refused (fencing)."""
