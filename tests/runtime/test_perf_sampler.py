"""The runtime's performance sampler against real processes named by a heartbeat file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_runtime.perf import AgentSampler
from states.protocol import CheckinRequest

#: Holds about 20 MB resident and burns no CPU until killed.
_AGENT = "import time; data = b'x' * 20_000_000; time.sleep(120)"


@pytest.fixture
def agent() -> Iterator[subprocess.Popen[bytes]]:
    """A real process standing in for the agent."""
    proc = subprocess.Popen([sys.executable, "-c", _AGENT])
    yield proc
    proc.kill()
    proc.wait()


def write_beat(path: Path, pid: int, *, age: timedelta = timedelta(0)) -> None:
    """The agent's heartbeat file, as the example agent writes it."""
    at = datetime.now(UTC) - age
    path.write_text(json.dumps({"version": "3.0.4", "time": at.isoformat(), "pid": pid}))


def test_samples_the_process_the_heartbeat_names(
    tmp_path: Path, agent: subprocess.Popen[bytes]
) -> None:
    """RSS from the first sample; CPU from the second sample of the same process on."""
    beat = tmp_path / "heartbeat.json"
    write_beat(beat, agent.pid)
    sampler = AgentSampler(lambda: [tmp_path / "missing.json", beat])
    first = sampler.sample()
    assert first is not None and first.pid == agent.pid and str(first.version) == "3.0.4"
    assert first.cpu_percent is None and first.rss_bytes > 0
    second = sampler.sample()
    assert second is not None and second.cpu_percent is not None and second.cpu_percent >= 0
    # it travels in a check-in, and a server that does not know the field ignores it
    request = CheckinRequest(platform="linux", performance=second)  # type: ignore[arg-type]
    assert CheckinRequest.model_validate_json(request.model_dump_json()) == request


def test_no_sample_without_a_live_fresh_heartbeat(
    tmp_path: Path, agent: subprocess.Popen[bytes]
) -> None:
    """No heartbeat, a stale one, or one naming a process that is gone: no sample."""
    beat = tmp_path / "heartbeat.json"
    sampler = AgentSampler(lambda: [beat])
    assert sampler.sample() is None
    write_beat(beat, agent.pid, age=timedelta(hours=1))
    assert sampler.sample() is None
    write_beat(beat, agent.pid)
    assert sampler.sample() is not None
    agent.kill()
    agent.wait()
    assert sampler.sample() is None
