"""Declarative state types: release manifests, plans, and their diff into steps."""

from states.manifest import (
    FileEntry,
    HealthCheck,
    HealthCheckKind,
    PlatformRelease,
    ReleaseManifest,
    validate_relative_path,
)
from states.plan import (
    CHANGING_ACTIONS,
    FORMAT_VERSION,
    Action,
    DevicePlan,
    InventoryRef,
    Plan,
    ReleaseRef,
    RolloutPlan,
    StateRef,
    Step,
    StepName,
    WavePlan,
)
from states.report import Report

__all__ = [
    "CHANGING_ACTIONS",
    "FORMAT_VERSION",
    "Action",
    "DevicePlan",
    "FileEntry",
    "HealthCheck",
    "HealthCheckKind",
    "InventoryRef",
    "Plan",
    "PlatformRelease",
    "ReleaseManifest",
    "ReleaseRef",
    "Report",
    "RolloutPlan",
    "StateRef",
    "Step",
    "StepName",
    "WavePlan",
    "validate_relative_path",
]
