"""The server's poll interval is bounded by the device config: 0, NaN, infinities and huge
values from a real (stub) server answer neither spin nor crash the pull loop."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from agent_runtime.config import load_config
from agent_runtime.pull import PullLoop
from tests.harness.sandbox import Sandbox
from tests.pull.conftest import pull_config
from tests.pull.stub import Answer, running_stub

LOW, HIGH = 2.0, 3600.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"0", LOW),
        (b"-5", LOW),
        (b"NaN", LOW),
        (b"-Infinity", LOW),
        (b"Infinity", HIGH),
        (b"1e300", HIGH),
        (b"1e999", HIGH),
        (b"30", 30.0),
    ],
)
def test_server_poll_interval_is_clamped_to_the_configured_bounds(
    running_device: Sandbox, raw: bytes, expected: float
) -> None:
    """A check-in answer's poll interval outside the bounds is clamped (and logged); the
    next wait is finite and within the bounds plus jitter."""
    sb = running_device
    with running_stub() as stub:
        stub.poll_interval = 30.0  # the enrollment answer's, within the bounds
        pull_config(sb, stub.url)
        cfg = yaml.safe_load(sb.config_path.read_text())
        cfg["converge"].update(poll_interval_min=f"{LOW:g}s", poll_interval_max=f"{HIGH:g}s")
        sb.config_path.write_text(yaml.safe_dump(cfg))
        stub.checkins.append(Answer(200, b'{"plan": null, "poll_interval": ' + raw + b"}"))
        lines: list[str] = []
        loop = PullLoop(load_config(sb.config_path), out=lines.append, rng=random.Random(7))
        delay, code = loop.step()
    assert code == 0, lines
    assert loop.poll_interval == expected
    assert math.isfinite(delay) and expected <= delay <= expected * 1.1
    clamped = expected != 30.0
    assert any("asked for a poll interval" in line for line in lines) == clamped, lines
    assert sb.state_json()["installed"] == "3.0.0"


def test_poll_bounds_in_the_wrong_order_are_a_config_error(running_device: Sandbox) -> None:
    """poll_interval_min above poll_interval_max is refused when the config is read."""
    sb = running_device
    sb.write_config(converge={"poll_interval_min": "2h", "poll_interval_max": "1h"})
    run = sb.cli("status")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "poll_interval_min" in run.stderr
