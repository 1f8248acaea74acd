"""The agent's managed configuration: agent.json and flags.json in $AGENT_CONFIG_DIR.

The runtime writes both (rendered by the engine from the operator repo's
templates, and the device's effective feature flags) and restarts the agent.
Either file may be absent: the agent then runs with its defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The config file the example releases' templates render.
CONFIG_FILE = "agent.json"
FLAGS_FILE = "flags.json"


def _read(name: str) -> dict[str, Any]:
    directory = os.environ.get("AGENT_CONFIG_DIR")
    if not directory:
        return {}
    path = Path(directory) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_config() -> dict[str, Any]:
    """The settings of agent.json ({} when there is none)."""
    return _read(CONFIG_FILE)


def load_flags() -> dict[str, Any]:
    """The feature flags of flags.json ({} when there is none)."""
    return _read(FLAGS_FILE)
