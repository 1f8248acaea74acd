"""The heartbeat file: proof for the runtime that this version is alive."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

#: Where the heartbeat goes when WEGWEISER_HEARTBEAT_FILE is not set:
#: relative to the directory the agent runs in (the runtime's health check agrees).
DEFAULT_HEARTBEAT_FILE = "heartbeat.json"


def heartbeat_path() -> Path:
    """The heartbeat file: $WEGWEISER_HEARTBEAT_FILE or heartbeat.json in the working directory."""
    return Path(os.environ.get("WEGWEISER_HEARTBEAT_FILE") or DEFAULT_HEARTBEAT_FILE)


def write_heartbeat(path: Path, version: str) -> None:
    """Atomically replace ``path`` with this process's heartbeat (version, pid, UTC time)."""
    # timezone.utc, not datetime.UTC: agents in the field run Python older than 3.11
    now = datetime.now(timezone.utc)  # noqa: UP017
    beat = {"version": version, "pid": os.getpid(), "time": now.isoformat()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(beat, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
