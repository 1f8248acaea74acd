"""The plan: what the engine decided for each device, as saved by `engine plan --out`.

The same models travel to devices (a per-device plan file, or a server's
check-in answer), so they ignore unknown keys: an old runtime must keep
working with a newer engine.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleetbase.platform import Platform
from fleetbase.version import Version

__all__ = [
    "AGENT",
    "CHANGING_ACTIONS",
    "FORMAT_VERSION",
    "RUNTIME",
    "Action",
    "DevicePlan",
    "InventoryRef",
    "Plan",
    "ReleaseRef",
    "RolloutPlan",
    "StateRef",
    "Step",
    "StepName",
    "WavePlan",
]

FORMAT_VERSION = 1

#: What a rollout or a device plan moves: the agent (the default) or the runtime itself.
AGENT = "agent"
RUNTIME = "runtime"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Action(StrEnum):
    """What the plan does to a device."""

    UPDATE = "update"  # move to a higher release
    NOOP = "noop"  # already on the desired release
    ROLLBACK = "rollback"  # move to a lower release
    INSTALL = "install"  # no agent installed yet
    ADOPT = "adopt"  # the desired release's files are in place, but no runtime manages them yet
    PINNED = "pinned"  # held on its pin although a group wants another release
    BLOCKED = "blocked"  # a change is wanted but cannot happen; see reason
    RECONFIGURE = "reconfigure"  # on the desired release, but its config files or flags differ


#: Actions that make a device run a transaction.
CHANGING_ACTIONS = frozenset(
    {Action.UPDATE, Action.ROLLBACK, Action.INSTALL, Action.ADOPT, Action.RECONFIGURE}
)


class StepName(StrEnum):
    """The steps of the on-device transaction, in order, as plans and step events name them.

    ``agent_runtime.phases.STEP_OF_PHASE`` maps the runtime's forward phases
    onto these by position; adding a step means adding its phase there.
    """

    DOWNLOAD = "download"
    VERIFY = "verify"
    BACKUP = "backup"
    SWAP = "swap"
    RESTART = "restart"
    CONFIRM_HEARTBEAT = "confirm_heartbeat"
    COMMIT = "commit"


class Step(_Wire):
    """One step of a device's transaction, with a human-readable detail."""

    name: StepName
    detail: str = ""


class ReleaseRef(_Wire):
    """Where a device finds a release's signed manifest and its artifacts.

    Locations are http(s) URLs or local paths. A relative local path is
    resolved against ``Plan.inventory.root``. With ``artifacts_by_hash`` a file
    is fetched from ``artifacts + sha256``; otherwise from ``artifacts/source``
    unless its ``source`` is already a URL.
    """

    version: Version
    serial: int
    manifest: str
    signature: str
    manifest_sha256: str
    artifacts: str
    artifacts_by_hash: bool = False


class DevicePlan(_Wire):
    """The plan for one device."""

    device: str
    group: str | None
    platform: Platform
    current: Version | None
    desired: Version | None
    action: Action
    reason: str = ""
    wave: int | None = None
    rollout: str | None = None
    steps: list[Step] = Field(default_factory=list)
    #: the channel ``desired`` was resolved from (the group follows it), else None
    channel: str | None = None
    #: A blocked device whose only unmet requirement is its runtime's version: the
    #: runtime version it must report (a specifier) before its rollout offers it the
    #: release; it waits in the rollout meanwhile (engine.requires).
    awaits_runtime: str | None = None
    #: "agent", or "runtime" for a runtime release (``Plan.runtime_devices``)
    component: str = AGENT
    #: the digest of the config files and flags the device should run (None: the
    #: release manages none); see states.config_bundle
    config_digest: str | None = None
    #: the config files' changes, unified diff per file with secrets masked (plan --diff)
    config_diff: dict[str, str] | None = None


class WavePlan(_Wire):
    """One wave of a rollout: its cumulative percentage and how many devices change in it."""

    index: int
    percent: float
    devices: int
    changing: int


class RolloutPlan(_Wire):
    """A group moving to a release: its policy and waves."""

    id: str
    group: str
    release: Version
    policy: dict[str, Any]
    maintenance_window: dict[str, Any] | None = None
    waves: list[WavePlan]
    #: groups whose rollout of the same release must complete first (rollout.after)
    after: list[str] = Field(default_factory=list)
    #: the channel the group follows (``release`` is what it resolved to), else None
    channel: str | None = None
    #: why the channel resolved to ``release``, e.g.
    #: "channel beta -> 3.1.0-beta.2 (newest on beta or more stable)"
    resolution: str | None = None
    #: "agent", or "runtime": the group moves to a runtime release (docs/runtime.md)
    component: str = AGENT


class InventoryRef(_Wire):
    """What the plan was computed from on the operator side."""

    root: str
    digest: str
    git_commit: str | None = None
    git_dirty: bool | None = None
    #: sha256 of each input file by its path relative to ``root``, so a stale
    #: plan can name the file that changed (empty in plans of older engines)
    files: dict[str, str] = Field(default_factory=dict)


class StateRef(_Wire):
    """Which reports the plan was computed from."""

    url: str
    reports: int
    reports_digest: str
    latest_report: datetime | None = None


class Plan(_Wire):
    """A whole fleet plan: the document `engine plan --out` writes and `engine apply` reads."""

    format_version: int = FORMAT_VERSION
    generated_at: datetime
    inventory: InventoryRef
    state: StateRef
    summary: dict[str, int]
    devices: list[DevicePlan]
    rollouts: list[RolloutPlan] = Field(default_factory=list)
    releases: dict[str, ReleaseRef] = Field(default_factory=dict)
    unmanaged: list[str] = Field(default_factory=list)
    unknown_reports: list[str] = Field(default_factory=list)
    #: each device's runtime release plan (groups with ``runtime:``), apart from ``devices``
    #: so that a runtime reading its own entry of ``devices`` never meets a runtime plan
    runtime_devices: list[DevicePlan] = Field(default_factory=list)
