"""The transaction journal: one JSON file, rewritten atomically before every phase.

A journal whose phase is not terminal is *open*: the runtime died (or gave
up) inside that transaction, and the next start recovers it before anything
else. ``saves`` counts every write of one transaction; recovery uses it to
detect a crash loop.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.errors import JournalError
from agent_runtime.phases import TERMINAL_PHASES, Phase
from fleetbase.version import Version

__all__ = ["JournalRecord", "JournalStore", "TransactionKind"]

JOURNAL_FORMAT = 1

TransactionKind = str  # "update" (download a release) | "restore" (from a local backup)


class JournalRecord(BaseModel):
    """Everything recovery needs to finish or undo one transaction."""

    model_config = ConfigDict(extra="ignore")

    format: int = JOURNAL_FORMAT
    txid: str
    kind: TransactionKind = "update"
    phase: Phase
    target: Version
    previous: Version | None
    started_at: datetime
    updated_at: datetime
    saves: int = 0
    recoveries: int = 0
    #: in-place swap: paths in the order they were started (appended *before* each rename)
    swap_started: list[str] = Field(default_factory=list)
    #: phases entered, in order (for `agent-runtime status` and tests)
    history: list[Phase] = Field(default_factory=list)
    error: str | None = None
    retries: int = 0

    @property
    def is_open(self) -> bool:
        """True while the transaction has not reached a terminal phase."""
        return self.phase not in TERMINAL_PHASES


class JournalStore:
    """Reads and atomically rewrites ``<state_dir>/journal.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.json"

    def load(self) -> JournalRecord | None:
        """The last journal written, or None when no transaction ever ran.

        Raises JournalError when the file is unreadable or malformed.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise JournalError(f"{self.path}: cannot read the journal: {e}") from e
        try:
            return JournalRecord.model_validate_json(data)
        except ValidationError as e:
            raise JournalError(f"{self.path}: malformed journal: {e.errors()[0]['msg']}") from e

    def save(self, record: JournalRecord, now: datetime) -> JournalRecord:
        """Durably write ``record`` with its save counter incremented; return what was written."""
        record.saves += 1
        record.updated_at = now
        if not record.history or record.history[-1] is not record.phase:
            record.history.append(record.phase)
        payload = json.dumps(record.model_dump(mode="json"), indent=1).encode()
        atomic_write_bytes(self.path, payload)
        return record
