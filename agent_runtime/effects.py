"""Small interfaces through which the transaction executor touches the world.

The executor (pure transition table + effects) runs with the real
implementations (each in its own module: ``fetch``, ``layouts``, ``services``,
``health``, ``clock``); the transaction tests also drive it with in-memory
fakes of them to assert the exact chain of phases per case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from fleetbase.version import Version
from states.manifest import HealthCheck

__all__ = ["Clock", "FileFetcher", "HealthProbe", "HealthResult", "RunSpec", "ServiceManager"]


@dataclass(frozen=True)
class RunSpec:
    """How to run the agent release that is now active.

    ``cwd`` is the directory holding the active release's files (the agent
    root for the in-place layout, ``<root>/current`` for the versioned one).
    ``argv`` is used only by the ``process`` service manager; the others start
    whatever their unit / service definition says.
    """

    cwd: Path
    argv: list[str]
    version: Version
    env: dict[str, str] = field(default_factory=dict)


class ServiceManager(Protocol):
    """Starts, stops and restarts the agent through the platform's service manager."""

    name: str

    def restart(self, run: RunSpec) -> None:
        """Stop the agent if running (gracefully, then forcibly) and start it again.

        Raises ServiceError when the service manager refuses or fails.
        """
        ...

    def stop(self) -> None:
        """Stop the agent if it runs; no error when it was not running."""
        ...

    def is_running(self) -> bool:
        """True when the service manager reports the agent running."""
        ...

    def ensure_running(self, run: RunSpec) -> bool:
        """Start the agent if it is not running; True when it had to be started."""
        ...


class FileFetcher(Protocol):
    """Fetches release documents and files (``agent_runtime.fetch.Fetcher``)."""

    #: extra request headers (pull mode: the device token for the server's files)
    headers: dict[str, str]
    #: bytes moved over the wire so far (a resumed download counts only what it moved)
    bytes_transferred: int

    def read_small(self, location: str, limit: int) -> bytes:
        """The content of a small document (manifest, signature) of at most ``limit`` bytes.

        Raises DownloadError when it cannot be read, ArtifactMismatchError when too large.
        """
        ...

    def fetch(self, location: str, dest: Path, *, size: int, sha256: str) -> None:
        """Make ``dest`` hold exactly ``size`` bytes hashing to ``sha256`` from ``location``.

        Raises DownloadError (transport) or ArtifactMismatchError (content).
        """
        ...

    def close(self) -> None:
        """Drop any kept-alive connection."""
        ...


@dataclass(frozen=True)
class HealthResult:
    """Outcome of a health check: passed or not, and why, in words for the operator."""

    healthy: bool
    detail: str


class HealthProbe(Protocol):
    """Proves that a given version of the agent is alive."""

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """Poll until the check passes for ``expected`` (evidence newer than ``since``)
        or ``check.timeout`` passes; never raises for an unhealthy agent."""
        ...


class Clock(Protocol):
    """Time, injectable so that tests control it."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait."""
        ...
