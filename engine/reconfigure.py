"""The ``reconfigure`` action: a device on its release whose config files or flags differ.

It runs the same transaction as an update, with only the config files
changing: staged, verified by hash, backed up, swapped together, the agent
restarted and its heartbeat confirmed, the previous files restored on failure.
"""

from __future__ import annotations

from engine._plan_decide import Outcome
from fleetbase.version import Version
from states.plan import Action, Step, StepName

__all__ = ["reconfigure_outcome", "reconfigure_steps", "short_digest"]


def short_digest(digest: str | None) -> str:
    """The first 8 hex digits of a ``sha256:`` digest, or ``none``."""
    if digest is None:
        return "none"
    return digest.removeprefix("sha256:")[:8]


def reconfigure_outcome(reported: str | None, desired: str, release: Version, why: str) -> Outcome:
    """The planner's outcome for a device on ``release`` reporting config ``reported``."""
    reason = f"config {short_digest(reported)} -> {short_digest(desired)} on {release} ({why})"
    return Action.RECONFIGURE, reason, True


_STEPS: dict[str, list[Step]] = {}


def reconfigure_steps(release: Version) -> list[Step]:
    """The transaction's steps when only the config files change (one list per release)."""
    key = str(release)
    found = _STEPS.get(key)
    if found is None:
        details = {
            StepName.DOWNLOAD: "the rendered config files and flags, with the check-in answer",
            StepName.VERIFY: "sha256 of each config file and the digest of them all",
            StepName.BACKUP: "keep the current config files restorable byte for byte",
            StepName.SWAP: "replace the config files together (agent files unchanged)",
            StepName.RESTART: "restart the agent through its service manager",
            StepName.CONFIRM_HEARTBEAT: f"{release} heartbeats after the restart",
            StepName.COMMIT: "record the config digest and report",
        }
        found = _STEPS[key] = [
            Step.model_construct(name=name, detail=details[name]) for name in StepName
        ]
    return found
