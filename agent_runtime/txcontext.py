"""What a transaction installs and from where, kept in ``staging/<txid>/`` for recovery.

Everything recovery needs — the verified manifest, its signature, where each
file comes from, when the agent was last restarted — is written before the
first journal save, so a new process can rebuild the context of any open
journal (signature re-verified).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.config import DeviceConfig
from agent_runtime.configfiles import load_bundle, save_bundle
from agent_runtime.errors import JournalError
from agent_runtime.layouts.base import SwapPlan
from agent_runtime.releases import kept_release
from agent_runtime.state import StateStore
from agent_runtime.trust import parse_signed
from fleetbase.version import Version
from states.config_bundle import ConfigBundle
from states.keyring import KeyRing
from states.manifest import HealthCheck, PlatformRelease, ReleaseManifest

__all__ = [
    "MANIFEST_NAME",
    "RECONFIGURE",
    "SPEC_NAME",
    "TxContext",
    "TxSpec",
    "new_txid",
    "previous_release",
]

MANIFEST_NAME = "manifest.yaml"
#: The kind of a transaction that changes only the config files.
RECONFIGURE = "reconfigure"
SPEC_NAME = "tx.json"


def new_txid(now: datetime) -> str:
    """A transaction id that sorts by time: ``20261127T101500-1a2b3c``."""
    return now.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class TxSpec(BaseModel):
    """What a transaction installs and from where; kept in ``staging/<txid>/tx.json``."""

    model_config = ConfigDict(extra="ignore")
    txid: str
    #: "update" (from the plan's release) | "restore" (from a local copy) | "reconfigure"
    kind: str = "update"
    target: Version
    previous: Version | None
    #: file path → where to fetch it (URL or local path)
    sources: dict[str, str]
    #: instant of the last (re)start, for "heartbeat newer than the restart"
    since: datetime | None = None
    rollback_since: datetime | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    #: config files the runtime managed before this transaction (removed when dropped)
    config_managed: list[str] = Field(default_factory=list)


@dataclass
class TxContext:
    """A transaction's inputs, rebuilt from staging on recovery."""

    spec: TxSpec
    staging: Path
    manifest: ReleaseManifest
    files: PlatformRelease
    manifest_bytes: bytes
    signature: bytes
    previous_files: PlatformRelease | None
    previous_health: HealthCheck | None
    #: the config files and flags installed with the release (None: left as they are)
    config: ConfigBundle | None = None

    @property
    def reconfigure(self) -> bool:
        """True when only the config files change (the agent's files stay)."""
        return self.spec.kind == RECONFIGURE

    @property
    def swap_plan(self) -> SwapPlan:
        """The layout's view of this transaction."""
        return SwapPlan(
            txid=self.spec.txid,
            old=self.spec.previous,
            new=self.spec.target,
            old_files=None if self.previous_files is None else self.previous_files.files,
            new_files=self.files.files,
            staging=self.staging,
        )

    def save_spec(self) -> None:
        """Durably rewrite ``tx.json``."""
        atomic_write_bytes(self.staging / SPEC_NAME, self.spec.model_dump_json(indent=1).encode())

    def write(self) -> None:
        """Write everything recovery needs into the staging directory."""
        self.staging.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.staging / (MANIFEST_NAME + ".sig"), self.signature)
        atomic_write_bytes(self.staging / MANIFEST_NAME, self.manifest_bytes)
        if self.config is not None:
            save_bundle(self.config, self.staging)
        self.save_spec()

    @classmethod
    def load(
        cls, staging: Path, keys: KeyRing, config: DeviceConfig, states: StateStore
    ) -> TxContext:
        """Rebuild a context from ``staging`` (signature re-verified); JournalError if missing."""
        try:
            spec = TxSpec.model_validate_json((staging / SPEC_NAME).read_bytes())
            manifest_bytes = (staging / MANIFEST_NAME).read_bytes()
            signature = (staging / (MANIFEST_NAME + ".sig")).read_bytes()
        except (OSError, ValueError) as e:
            raise JournalError(f"{staging}: transaction files unreadable: {e}") from e
        manifest = parse_signed(manifest_bytes, signature, keys, str(staging / MANIFEST_NAME))
        files = manifest.platforms.get(config.platform)
        if files is None:
            raise JournalError(f"{staging}: manifest has no files for {config.platform}")
        prev_files, prev_health = previous_release(spec.previous, keys, config, states)
        try:
            bundle = load_bundle(staging)
        except (OSError, ValueError) as e:
            raise JournalError(f"{staging}: config bundle unreadable: {e}") from e
        return cls(
            spec,
            staging,
            manifest,
            files,
            manifest_bytes,
            signature,
            prev_files,
            prev_health,
            bundle,
        )


def previous_release(
    version: Version | None, keys: KeyRing, config: DeviceConfig, states: StateStore
) -> tuple[PlatformRelease | None, HealthCheck | None]:
    """Files and health check of an installed release from its kept manifest (None if unknown)."""
    m = None if version is None else kept_release(states, keys, version)
    if m is None:
        return None, None
    return m.platforms.get(config.platform), m.health_check
