"""Device state: what is installed, what is known-good, what was seen and tried.

One JSON file (``<state_dir>/state.json``) written atomically. Verified
manifests (and their signatures) of installed releases are kept beside it in
``<state_dir>/manifests/`` so that the next update knows the old file list and
which rollbacks the installed release authorises.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.errors import StateError
from fleetbase.version import Version

__all__ = ["Adoption", "AdoptionStatus", "CachedFile", "DeviceState", "Result", "StateStore"]


class Result(StrEnum):
    """Outcome of one converge, as reported."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REFUSED = "refused"
    NOOP = "noop"


class CachedFile(BaseModel):
    """What an installed file looked like when its hash was last checked."""

    model_config = ConfigDict(extra="ignore")
    size: int
    mtime_ns: int
    inode: int
    sha256: str


AdoptionStatus = Literal["known", "unknown", "empty"]


class Adoption(BaseModel):
    """What adoption found: the release the installed files are (``known``), files of no
    known release (``unknown``), or no agent files at all (``empty``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: AdoptionStatus
    version: Version | None = None
    detail: str
    #: agent files that match no release's entry (backed up when the status is unknown)
    unmatched: list[str] = Field(default_factory=list)
    backup: str | None = None
    at: datetime


class DeviceState(BaseModel):
    """The runtime's memory across runs."""

    model_config = ConfigDict(extra="ignore")

    installed: Version | None = None
    known_good: Version | None = None
    #: the known-good before the current one (what `agent-runtime rollback` restores)
    previous: Version | None = None
    #: how ``installed`` became known without a transaction: "hash", "config", "plan" or None
    adopted_from: str | None = None
    #: what identifying a field install by its files' hashes found (agent_runtime.adopt)
    adoption: Adoption | None = None
    highest_serial: int = 0
    #: the desired release of the last converge; attempts reset when it changes
    desired: Version | None = None
    attempts: dict[str, int] = Field(default_factory=dict)
    last_result: Result | None = None
    last_detail: str = ""
    last_run: datetime | None = None
    #: path → stat + sha256 of the installed files, for the cheap no-op check
    file_cache: dict[str, CachedFile] = Field(default_factory=dict)
    #: the digest of the managed config files and flags installed (states.config_bundle)
    config_digest: str | None = None
    #: the managed config files installed, relative to the config directory
    config_files: list[str] = Field(default_factory=list)


class StateStore:
    """Loads and saves the device state and the installed releases' manifests."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"
        self.manifests = state_dir / "manifests"

    def load(self) -> DeviceState:
        """The saved state, or a fresh one on first run; StateError when unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return DeviceState()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read the device state: {e}") from e
        try:
            return DeviceState.model_validate_json(data)
        except ValidationError as e:
            raise StateError(f"{self.path}: malformed device state: {e.errors()[0]['msg']}") from e

    def save(self, state: DeviceState) -> None:
        """Durably replace the state file."""
        atomic_write_bytes(self.path, json.dumps(state.model_dump(mode="json"), indent=1).encode())

    def manifest_paths(self, version: Version) -> tuple[Path, Path]:
        """Where the verified manifest of ``version`` and its signature are kept."""
        base = self.manifests / f"{version}.yaml"
        return base, base.with_name(base.name + ".sig")

    def keep_manifest(self, version: Version, manifest: bytes, signature: bytes) -> None:
        """Keep a verified manifest and its signature for ``version``."""
        m, s = self.manifest_paths(version)
        atomic_write_bytes(s, signature)
        atomic_write_bytes(m, manifest)

    def kept_manifest(self, version: Version) -> tuple[bytes, bytes] | None:
        """The kept manifest and signature bytes of ``version``, if any."""
        m, s = self.manifest_paths(version)
        try:
            return m.read_bytes(), s.read_bytes()
        except OSError:
            return None
