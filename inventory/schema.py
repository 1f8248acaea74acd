"""JSON Schema of the operator repo's YAML files (inventory, releases, engine.yaml, channels)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from inventory.channels import ChannelsFile
from inventory.loader import InventoryFile
from inventory.models import EngineSettings
from states.manifest import ReleaseManifest

__all__ = ["KINDS", "schema_for"]

#: The kinds of file, by the name `engine schema --kind` takes.
KINDS: dict[str, type[BaseModel]] = {
    "inventory": InventoryFile,
    "release": ReleaseManifest,
    "engine": EngineSettings,
    "channels": ChannelsFile,
}

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_for(kind: str) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one kind of file: inventory, release, engine, channels."""
    schema = KINDS[kind].model_json_schema(mode="validation")
    return {"$schema": _DIALECT, **schema}
