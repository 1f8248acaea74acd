"""Fixtures: real example-agent releases in temporary directories, a fake command runner."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent_runtime.effects import RunSpec
from agent_runtime.services import ProcessManager
from fleetbase.version import Version

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "examples" / "fleet" / "artifacts"
#: Short heartbeat interval so that tests wait little.
FAST_ENV = {"HEARTBEAT_INTERVAL": "0.2"}


def install_release(version: str, dest: Path) -> RunSpec:
    """Copy the built example release ``version`` (linux files) to ``dest``; its RunSpec."""
    shutil.copytree(ARTIFACTS / version / "linux", dest)
    return RunSpec(
        cwd=dest,
        argv=["{python}", "nats_agent.py"],
        version=Version(version),
        env=dict(FAST_ENV),
    )


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[list[ProcessManager]]:
    """A list to register process managers in; every agent they track is stopped afterwards."""
    made: list[ProcessManager] = []
    yield made
    for manager in made:
        manager.stop()


@pytest.fixture
def process_manager(tmp_path: Path, managers: list[ProcessManager]) -> ProcessManager:
    """A process manager with its state directory in tmp_path (agents stopped at teardown)."""
    manager = ProcessManager(tmp_path / "state", stop_timeout=5.0)
    managers.append(manager)
    return manager


Answer = subprocess.CompletedProcess[str] | BaseException


@dataclass
class FakeRunner:
    """Answers scripted commands in order; fails the test on any other command."""

    script: list[tuple[list[str], Answer]]
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        assert self.script, f"unexpected command {argv}"
        expected, answer = self.script.pop(0)
        assert argv == expected, f"expected {expected}, got {argv}"
        if isinstance(answer, BaseException):
            raise answer
        return subprocess.CompletedProcess(argv, answer.returncode, answer.stdout, answer.stderr)

    def done(self) -> bool:
        """True when every scripted command was issued."""
        return not self.script


def out(argv: list[str], code: int = 0, stdout: str = "", stderr: str = "") -> Answer:
    """A completed command as the real tool would answer it."""
    return subprocess.CompletedProcess(argv, code, stdout, stderr)


class FakeTime:
    """Monotonic time that only moves when slept (for polling loops)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """Current fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the fake time."""
        self.now += seconds
