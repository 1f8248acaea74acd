"""Loading the operator repo: YAML (optionally Jinja2-templated) into validated models.

Versions, durations and platforms live in the base layer (``fleetbase``).
The loader itself (``inventory.loader.load_operator_repo``) is not imported here,
so that importing the models does not pull in Jinja2, rapidyaml or orjson.
"""

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
    RolloutPolicy,
)

__all__ = [
    "AgentSpec",
    "Device",
    "EngineSettings",
    "Group",
    "Inventory",
    "InventoryError",
    "MaintenanceWindow",
    "Match",
    "OnFailure",
    "Problem",
    "RolloutPolicy",
]
