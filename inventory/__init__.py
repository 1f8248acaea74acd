"""Loading the operator repo: YAML (optionally Jinja2-templated) into validated models."""

from inventory.duration import Duration, format_duration, parse_duration
from inventory.models import (
    AgentSpec,
    Device,
    EngineSettings,
    Group,
    Inventory,
    MaintenanceWindow,
    Match,
    OnFailure,
    Platform,
    RolloutPolicy,
)
from inventory.version import Version, VersionError

__all__ = [
    "AgentSpec",
    "Device",
    "Duration",
    "EngineSettings",
    "Group",
    "Inventory",
    "MaintenanceWindow",
    "Match",
    "OnFailure",
    "Platform",
    "RolloutPolicy",
    "Version",
    "VersionError",
    "format_duration",
    "parse_duration",
]
