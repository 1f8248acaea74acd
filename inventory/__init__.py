"""Loading the operator repo: YAML (optionally Jinja2-templated) into validated models.

The loader itself (``inventory.loader.load_operator_repo``) is not imported here:
the agent runtime imports these shared models and must not pull in Jinja2,
rapidyaml or orjson.
"""

from inventory.duration import Duration, format_duration, parse_duration
from inventory.errors import InventoryError, Problem
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
    "InventoryError",
    "MaintenanceWindow",
    "Match",
    "OnFailure",
    "Platform",
    "Problem",
    "RolloutPolicy",
    "Version",
    "VersionError",
    "format_duration",
    "parse_duration",
]
