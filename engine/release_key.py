"""Where the release signing key is: ``--key``, else ``$ENGINE_SIGNING_KEY``, else engine.yaml.

`engine release sign` and `engine runtime bundle` sign with the same key.
"""

from __future__ import annotations

import os
from pathlib import Path

from inventory.loader import load_engine_settings

__all__ = ["SIGNING_KEY_ENV", "signing_key_path"]

#: Environment variable naming the signing key when --key is not given.
SIGNING_KEY_ENV = "ENGINE_SIGNING_KEY"


def signing_key_path(directory: Path, explicit: Path | None) -> Path | None:
    """The signing key file for the operator repo at ``directory``, or None when none is
    configured. Raises InventoryError when engine.yaml is broken."""
    if explicit is not None:
        return explicit
    env = os.environ.get(SIGNING_KEY_ENV)
    if env:
        return Path(env)
    settings = load_engine_settings(directory)
    if settings.signing_key:
        return directory / settings.signing_key
    return None
