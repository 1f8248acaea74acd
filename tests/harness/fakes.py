"""In-memory fakes of the runtime's injected effects (``tests.harness.world`` runs on them).

The fakes implement the interfaces of ``agent_runtime.effects`` (fetcher,
service manager, health probe, clock) and ``agent_runtime.layouts.base``
(layout). They keep their state in memory, except for what the executor
itself reads from disk: staged downloads (verified by hashing) and the
active files (stat-cached after commit), kept under a temporary directory.
Every fake consults one ``Faults`` script, so a test can make a given
effect fail, corrupt its output, or "kill" the runtime (``Crash``, a
BaseException the executor does not catch: the journal stays as the dead
process left it).
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_runtime.effects import Clock, HealthResult, RunSpec
from agent_runtime.errors import DownloadError, LayoutError, ServiceError
from agent_runtime.layouts.base import RecordTouch, SwapPlan
from fleetbase.version import Version
from states.manifest import FileEntry, HealthCheck

__all__ = ["Crash", "FakeClock", "FakeFetcher", "FakeLayout", "FakeProbe", "FakeService", "Faults"]

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class Crash(BaseException):
    """The runtime process died here (the in-process stand-in for SIGKILL)."""


@dataclass
class Faults:
    """What goes wrong next: point → queue of actions ("fail", "crash", "corrupt")."""

    queued: dict[str, deque[str]] = field(default_factory=dict)

    def add(self, point: str, *actions: str) -> None:
        """Queue ``actions`` for ``point``; each hit of the point takes one."""
        self.queued.setdefault(point, deque()).extend(actions)

    def take(self, point: str) -> str | None:
        """The next action queued for ``point``, if any."""
        queue = self.queued.get(point)
        return queue.popleft() if queue else None

    def hit(self, point: str, error: Callable[[str], Exception]) -> str | None:
        """Raise ``error`` on "fail", Crash on "crash"; return any other action."""
        action = self.take(point)
        if action == "fail":
            raise error(f"{point}: failure injected")
        if action == "crash":
            raise Crash(point)
        return action


class FakeClock:
    """A clock that moves only when slept on."""

    def __init__(self, start: datetime = T0) -> None:
        self.start = start
        self.elapsed = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        """Start plus the time slept so far."""
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        """Seconds slept so far."""
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        """Advance at once (and remember the sleep)."""
        self.sleeps.append(seconds)
        self.elapsed += max(seconds, 0.0)


class FakeFetcher:
    """Serves documents and files from memory; ``fetch`` writes the staged file."""

    def __init__(self, faults: Faults, calls: list[str]) -> None:
        self.faults = faults
        self.calls = calls
        self.documents: dict[str, bytes] = {}
        self.headers: dict[str, str] = {}
        self.bytes_transferred = 0

    def read_small(self, location: str, limit: int) -> bytes:
        """A document, or DownloadError 404."""
        if location not in self.documents:
            raise DownloadError(f"{location}: HTTP 404", status=404)
        return self.documents[location][: limit + 1]

    def fetch(self, location: str, dest: Path, *, size: int, sha256: str) -> None:
        """Write the file at ``location`` to ``dest``; "corrupt" writes other bytes."""
        self.calls.append(f"fetch {Path(location).name}")
        action = self.faults.hit("fetch", DownloadError)
        data = self.documents[location]
        if action == "corrupt":  # the same size, other content: only VERIFY can tell
            data = bytes(b ^ 0xFF for b in data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        self.bytes_transferred += len(data)

    def close(self) -> None:
        """Nothing is kept open."""


class FakeService:
    """Remembers which version runs; ``restarts`` lists every successful (re)start."""

    name = "fake"

    def __init__(self, faults: Faults, calls: list[str]) -> None:
        self.faults = faults
        self.calls = calls
        self.running: Version | None = None
        self.restarts: list[str] = []

    def restart(self, run: RunSpec) -> None:
        """Run ``run.version`` (point ``restart <version>``)."""
        self.calls.append(f"restart {run.version}")
        self.faults.hit(f"restart {run.version}", ServiceError)
        self.running = run.version
        self.restarts.append(str(run.version))

    def stop(self) -> None:
        """Nothing runs afterwards."""
        self.calls.append("stop")
        self.running = None

    def is_running(self) -> bool:
        """True while a version runs."""
        return self.running is not None

    def ensure_running(self, run: RunSpec) -> bool:
        """Start ``run.version`` when nothing runs."""
        if self.running is not None:
            return False
        self.calls.append(f"start {run.version}")
        self.running = run.version
        return True


class FakeProbe:
    """Healthy when the service runs the expected version (point ``probe <version>``)."""

    def __init__(self, service: FakeService, faults: Faults, calls: list[str]) -> None:
        self.service = service
        self.faults = faults
        self.calls = calls

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """An unhealthy result on "fail" or when another version runs; never raises."""
        self.calls.append(f"probe {expected}")
        action = self.faults.take(f"probe {expected}")
        if action == "crash":
            raise Crash(f"probe {expected}")
        if action == "fail":
            return HealthResult(False, f"{expected}: no heartbeat (injected)")
        if self.service.running != expected:
            return HealthResult(False, f"{expected} is not running ({self.service.running})")
        return HealthResult(True, f"{expected} heartbeats")


class FakeLayout:
    """The active files in ``root``; backups in memory, by version."""

    name = "fake"

    def __init__(self, root: Path, faults: Faults, calls: list[str]) -> None:
        self.root = root
        self.faults = faults
        self.calls = calls
        self.backups: dict[Version | None, dict[str, bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)

    def files(self) -> dict[str, bytes]:
        """Relative path → content of every active file."""
        return {p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in sorted(self.root.rglob("*")) if p.is_file()}  # fmt: skip

    def _replace(self, files: dict[str, bytes]) -> None:
        shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        for rel, data in files.items():
            (self.root / rel).write_bytes(data)

    def active_dir(self, version: Version) -> Path:
        """Every version runs in ``root``."""
        return self.root

    def installed_path(self, version: Version, entry: FileEntry) -> Path:
        """``root/<path>``."""
        return self.root / entry.path

    def has_files(self) -> bool:
        """True when ``root`` holds a file."""
        return bool(self.files())

    def restore_source(self, version: Version) -> Path | None:
        """No local copy is ever complete (restores are the real layouts' business)."""
        return None

    def backup(self, plan: SwapPlan) -> None:
        """Keep the active files in memory as ``plan.old``'s."""
        self.calls.append("backup")
        self.faults.hit("backup", LayoutError)
        self.backups[plan.old] = self.files()

    def swap(self, plan: SwapPlan, record: RecordTouch) -> None:
        """Move the staged files in one by one (point ``swap`` after the first one)."""
        self.calls.append("swap")
        for i, entry in enumerate(plan.new_files):
            record(entry.path)
            (self.root / entry.path).write_bytes(plan.staged(entry).read_bytes())
            if i == 0:
                self.faults.hit("swap", LayoutError)
        new = {e.path for e in plan.new_files}
        for rel in set(self.files()) - new:
            (self.root / rel).unlink()

    def rollback(self, plan: SwapPlan, touched: Sequence[str]) -> None:
        """Put the backup of ``plan.old`` back (nothing when there was none)."""
        self.calls.append("rollback")
        self.faults.hit("rollback", LayoutError)
        self._replace(self.backups.get(plan.old, {}))

    def clear_temporaries(self, plan: SwapPlan) -> None:
        """Nothing: this layout writes no temporary files."""

    def finish(self, plan: SwapPlan, keep: set[Version], cutoff: datetime) -> None:
        """Drop backups of versions not in ``keep`` (point ``finish``)."""
        self.calls.append("finish")
        self.faults.hit("finish", LayoutError)
        self.backups = {v: f for v, f in self.backups.items() if v in keep}

    def discard(self, plan: SwapPlan) -> None:
        """Nothing of the failed target is left in ``root`` after the rollback."""
        self.calls.append("discard")
