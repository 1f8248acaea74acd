"""The example agent as a plain program: signals, exit codes, heartbeat location."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.runtime_services.conftest import install_release


def _start(cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "nats_agent.py"],
        cwd=cwd,
        env={"HEARTBEAT_INTERVAL": "0.1", "PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigint_stops_the_agent_with_exit_zero(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) stops the agent cleanly with exit code 0."""
    run = install_release("3.0.0", tmp_path / "agent")
    agent = _start(run.cwd)
    _wait_file(run.cwd / "heartbeat.json")
    agent.send_signal(signal.SIGINT)
    stdout, _ = agent.communicate(timeout=10)
    assert agent.returncode == 0
    assert "agent 3.0.0 stopping" in stdout


def test_heartbeat_file_location_from_environment(tmp_path: Path) -> None:
    """WEGWEISER_HEARTBEAT_FILE moves the heartbeat; it names version and pid."""
    run = install_release("3.0.1", tmp_path / "agent")
    beat = tmp_path / "elsewhere.json"
    agent = _start(run.cwd, WEGWEISER_HEARTBEAT_FILE=str(beat))
    try:
        _wait_file(beat)
        data = json.loads(beat.read_text())
        assert data["version"] == "3.0.1" and data["pid"] == agent.pid
        assert not (run.cwd / "heartbeat.json").exists()
    finally:
        agent.terminate()
        agent.communicate(timeout=10)
    assert agent.returncode == 0


def test_broken_release_exits_three_at_start(tmp_path: Path) -> None:
    """3.0.2 exits at once with code 3 and an error on stderr, writing no heartbeat."""
    run = install_release("3.0.2", tmp_path / "agent")
    agent = _start(run.cwd)
    _, stderr = agent.communicate(timeout=10)
    assert agent.returncode == 3
    assert "cannot start" in stderr
    assert not (run.cwd / "heartbeat.json").exists()
