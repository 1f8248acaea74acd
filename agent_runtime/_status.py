"""What `agent-runtime status` shows: versions, attempts, the journal and the last result."""

from __future__ import annotations

from typing import Any

from agent_runtime.config import DeviceConfig
from agent_runtime.effects import ServiceManager
from agent_runtime.errors import JournalError
from agent_runtime.facts import facts
from agent_runtime.journal import JournalStore
from agent_runtime.state import StateStore

__all__ = ["status_document"]


def status_document(
    config: DeviceConfig, states: StateStore, journal_store: JournalStore, service: ServiceManager
) -> dict[str, Any]:
    """Installed / known-good versions, the journal and the last result, as plain data."""
    state = states.load()
    found = facts(config.platform)
    try:
        record = journal_store.load()
    except JournalError as e:
        record = None
        journal: dict[str, Any] = {"error": str(e)}
    else:
        journal = {"state": "none"}
    if record is not None:
        journal = {
            "state": "open" if record.is_open else "closed",
            "txid": record.txid,
            "phase": str(record.phase),
            "target": str(record.target),
            "previous": None if record.previous is None else str(record.previous),
            "history": [str(p) for p in record.history],
            "error": record.error,
            "saves": record.saves,
        }
    return {
        "device": config.device,
        "layout": config.layout,
        "installed": None if state.installed is None else str(state.installed),
        "known_good": None if state.known_good is None else str(state.known_good),
        "previous": None if state.previous is None else str(state.previous),
        "adopted_from": state.adopted_from,
        "config_digest": state.config_digest,
        "highest_serial": state.highest_serial,
        "desired": None if state.desired is None else str(state.desired),
        "attempts": dict(state.attempts),
        "last_result": None if state.last_result is None else str(state.last_result),
        "last_detail": state.last_detail,
        "last_run": None if state.last_run is None else state.last_run.isoformat(),
        "agent_running": service.is_running(),
        "journal": journal,
        # what releases' requires: is checked against (the engine's SSH push reports them)
        "facts": {
            "python_version": found.python_version,
            "os_version": found.os_version,
            "components": dict(found.components),
        },
    }
