"""How `engine serve` runs: its settings and the offer function it asks at each check-in."""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from engine.rollouts.offers import Offer
from engine.store import Store
from fleetbase.clock import utc_now
from fleetbase.version import Version
from states.report import Report

__all__ = ["MAX_BODY_BYTES", "Offer", "OfferFunction", "ServerSettings"]

#: Largest request body accepted (bytes); a check-in is well under 2 KiB.
MAX_BODY_BYTES = 64 * 1024


#: ``offer_for_device(conn, device, report, now)``: the device's plan, or None.
OfferFunction = Callable[[Connection, str, Report, datetime], Offer | None]


@dataclass
class ServerSettings:
    """How the server runs. ``known_devices`` None: any device id may enroll."""

    store: Store
    repo_root: Path
    admin_token: str
    enrollment_secret: str
    #: the read-only token GET /metrics also accepts (None: the admin token only)
    metrics_token: str | None = None
    known_devices: Container[str] | None = None
    poll_interval: float = 60.0
    poll_jitter: float = 0.1
    field_release: Version | None = None
    clock: Callable[[], datetime] = utc_now
    max_body_bytes: int = MAX_BODY_BYTES
    token_cache_seconds: float = 5.0
    #: write-behind window of device reports (engine.server._checkin_db); 0: none
    report_flush_seconds: float = 0.2
    online_after: float | None = None
    offer: OfferFunction | None = None
    title: str = "engine serve"
    runtime_bundles: Path | None = None
    #: public keys the device installer pins (engine.yaml trusted_keys); the URL it names
    install_keys: list[str] = field(default_factory=list)
    public_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: step events per device: posted per minute, at once, kept; and their age limit
    events_per_minute: int = 120
    events_burst: int = 300
    events_kept_per_device: int = 1000
    event_retention_seconds: float = 30 * 86400.0

    @property
    def runtime_bundles_dir(self) -> Path:
        """Where the runtime bundles are (default ``<repo>/.engine/runtime-bundles``)."""
        return self.runtime_bundles or self.repo_root / ".engine" / "runtime-bundles"

    @property
    def runtime_releases_dir(self) -> Path:
        """Where the runtime releases are: ``<repo>/runtime-releases`` (engine.runtime_releases)."""
        return self.repo_root / "runtime-releases"

    @property
    def online_seconds(self) -> float:
        """A device seen within this many seconds counts as online (default 3 poll intervals)."""
        return self.online_after if self.online_after is not None else 3 * self.poll_interval
