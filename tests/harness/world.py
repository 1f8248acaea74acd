"""A device on in-memory effects: one World, many runtimes (a new one after each crash).

``World`` keeps the fakes (``tests.harness.fakes``) and the device's state
directory across runtimes, so a new ``Runtime`` built after a ``Crash``
recovers the way a restarted process does. It publishes two signed releases
from memory, records every journal write (``RecordingJournal``) and every
phase the executor reports, and renders them as a chain of phases.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent_runtime.config import DeviceConfig
from agent_runtime.converge import ConvergeResult, Runtime
from agent_runtime.effects import HealthProbe
from agent_runtime.journal import JournalRecord, JournalStore
from agent_runtime.phases import Phase
from agent_runtime.plan_source import DesiredRelease
from engine.signing import generate_key, public_key_text, sign
from states.plan import DevicePlan, ReleaseRef
from tests.harness.fakes import (
    Crash,
    FakeClock,
    FakeFetcher,
    FakeLayout,
    FakeProbe,
    FakeService,
    Faults,
)

__all__ = ["RELEASES", "RecordingJournal", "World"]


class RecordingJournal(JournalStore):
    """The real journal file, and every write told to ``on_write``: the phase, with the path
    of a swap's touch (``SWAP+agent.py``)."""

    def __init__(self, state_dir: Path, on_write: Callable[[JournalRecord, str], None]) -> None:
        super().__init__(state_dir)
        self.on_write = on_write

    def save(self, record: JournalRecord, now: datetime) -> JournalRecord:
        """Write and tell."""
        before = self.load()
        saved = super().save(record, now)
        touched = len(saved.swap_started) > (
            len(before.swap_started) if before and before.txid == saved.txid else 0
        )
        phase = str(saved.phase)
        self.on_write(saved, f"{phase}+{saved.swap_started[-1]}" if touched else phase)
        return saved


#: The releases a world publishes: version → (serial, files).
RELEASES: dict[str, tuple[int, dict[str, bytes]]] = {
    "3.0.0": (300, {"agent.py": b"print('3.0.0')\n", "data.bin": b"\x00" * 64}),
    "3.0.1": (301, {"agent.py": b"print('3.0.1')\n", "data.bin": b"\x01" * 64}),
}


@functools.cache
def _signing_key() -> Any:
    """One release signing key per process (generating one per world costs a third of a second)."""
    return generate_key()


class World:
    """One device's effects and state directory, shared by every runtime built on it."""

    def __init__(self, base: Path, *, max_attempts: int = 2) -> None:
        self.base = base
        self.faults = Faults()
        self.calls: list[str] = []
        #: every journal write, in order
        self.writes: list[str] = []
        #: (phase, "started" | "ok" | "failed" | "end"), ("|", "crash") and ("open", "end")
        self.phases: list[tuple[str, str]] = []
        self.clock = FakeClock()
        self.fetcher = FakeFetcher(self.faults, self.calls)
        self.service = FakeService(self.faults, self.calls)
        self.probe = FakeProbe(self.service, self.faults, self.calls)
        self.layout = FakeLayout(base / "agent", self.faults, self.calls)
        key = _signing_key()
        self.config = DeviceConfig.model_validate({
            "device": "fake-01", "platform": "linux", "agent_root": str(base / "agent"),
            "state_dir": str(base / "state"), "trusted_keys": [public_key_text(key.public_key())],
            "max_attempts": max_attempts, "command": ["agent"],
        })  # fmt: skip
        self.refs: dict[str, ReleaseRef] = {}
        for version, (serial, files) in RELEASES.items():
            self._publish(version, serial, files, key)

    def _publish(self, version: str, serial: int, files: dict[str, bytes], key: Any) -> None:
        doc = {
            "kind": "release", "version": version, "serial": serial,
            "expires": "2036-01-01T00:00:00Z",
            "health_check": {"kind": "heartbeat_file", "path": "heartbeat.json"},
            "platforms": {"linux": {"files": [
                {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                 "source": f"{version}/{rel}"} for rel, data in files.items()]}},
        }  # fmt: skip
        manifest = yaml.safe_dump(doc, sort_keys=False).encode()
        docs = self.fetcher.documents
        docs[f"mem/{version}.yaml"] = manifest
        docs[f"mem/{version}.yaml.sig"] = sign(manifest, [key])
        for rel, data in files.items():
            docs[f"mem/artifacts/{version}/{rel}"] = data
        self.refs[version] = ReleaseRef(
            version=version,  # type: ignore[arg-type]
            serial=serial,
            manifest=f"mem/{version}.yaml",
            signature=f"mem/{version}.yaml.sig",
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            artifacts="mem/artifacts",
        )

    def release_files(self, version: str) -> dict[str, bytes]:
        """The files ``version`` installs."""
        return RELEASES[version][1]

    def runtime(self) -> Runtime:
        """A new runtime on this world's effects (a fresh process after a crash)."""
        rt = Runtime(
            self.config, service=self.service, make_probe=self._probe, clock=self.clock,
            fetcher=self.fetcher, layout=self.layout, out=lambda _line: None,
        )  # fmt: skip
        rt.journal = rt.executor.fx.journal = RecordingJournal(self.config.state_dir, self._wrote)
        rt.executor.fx.on_phase = self._on_phase
        return rt

    def _probe(self, agent_dir: Path) -> HealthProbe:
        return self.probe

    def _wrote(self, record: JournalRecord, text: str) -> None:
        self.writes.append(text)
        if not record.is_open:
            self.phases.append((str(record.phase), "end"))

    def _on_phase(self, record: JournalRecord, phase: Phase, status: str, detail: str) -> None:
        self.phases.append((str(phase), status))
        if status == "started" and self.faults.take(f"before:{phase}") == "crash":
            self.phases.append(("|", "crash"))
            raise Crash(f"before:{phase}")

    def converge(self, version: str) -> ConvergeResult | None:
        """One `converge --once` to ``version`` by a new runtime; None when it crashed."""
        entry = DevicePlan(
            device="fake-01", group="g", platform="linux",  # type: ignore[arg-type]
            current=None, desired=version, action="update",  # type: ignore[arg-type]
        )  # fmt: skip
        source = _Static(DesiredRelease(entry, self.refs[version], None))
        try:
            result = self.runtime().converge_once(source)
        except Crash:
            if not self.phases or self.phases[-1][0] != "|":
                self.phases.append(("|", "crash"))
            return None
        record = self.journal()
        if record is not None and record.is_open:
            self.phases.append(("open", "end"))
        return result

    def chain(self) -> str:
        """The phases entered, the terminal phase of each transaction, "|" where the runtime
        died and "open" where a run left its journal open; space-separated."""
        return " ".join(p for p, kind in self.phases if kind in ("started", "end", "crash"))

    def journal(self) -> JournalRecord | None:
        """The journal as the last runtime left it."""
        return JournalStore(self.config.state_dir).load()

    def forget(self) -> None:
        """Clear the records (after setting a device up)."""
        self.calls.clear()
        self.writes.clear()
        self.phases.clear()
        self.service.restarts.clear()
        self.clock.sleeps.clear()


@dataclass
class _Static:
    desired: DesiredRelease

    def fetch(self) -> DesiredRelease:
        return self.desired
